"""Checks of the command line's output paths, made before any work: no command may overwrite its own
inputs, write into a protection directory, replace a file without --force, or find out only after
minutes of training that it cannot write where it was told to."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from modelprove.core.errors import ModelproveError
from modelprove.core.verdict import FORMAT as VERDICT_FORMAT
from modelprove.methods.protection import protection_containing


def check_output_file(
    path: Path,
    *,
    flag: str,
    force: bool,
    suffixes: tuple[str, ...] = (),
    inputs: Iterable[Path] = (),
    replaceable: Callable[[Path], bool] | None = None,
    what: str = "file",
) -> Path:
    """Refuse ``path`` (given as ``flag``) unless the command can write it there without losing anything.

    Refused: a directory; any of the command's ``inputs``; a path inside a protection directory; a
    suffix not in ``suffixes``; a parent that cannot be created or written; an existing file without
    ``force``, or with it when ``replaceable`` says the file is not one this command wrote (``what``).
    """
    path = Path(path)
    if path.is_dir():
        raise ModelproveError(f"is a directory; {flag} takes a file name for the {what}.", path=path,
                              fix=f"give {flag} a file name (e.g. one inside this directory).")
    for given in inputs:
        if _same_file(path, Path(given)):
            raise ModelproveError(f"is an input of this command; writing the {what} there would destroy it.",
                                  path=path, fix=f"give {flag} a new file name.")
    if (protection := protection_containing(path.parent)) is not None:
        raise ModelproveError(f"lies inside the protection {protection}; modelprove never writes into a "
                              "protection directory.", path=path, fix=f"give {flag} a path outside the protection.")
    if suffixes and path.suffix.lower() not in suffixes:
        raise ModelproveError(f"{flag} must end in {' or '.join(suffixes)}.", path=path,
                              fix=f"give {flag} a file name ending in {suffixes[0]}.")
    check_parent(path, flag)
    if path.exists():
        if not force:
            raise ModelproveError("already exists; refusing to overwrite it.", path=path,
                                  fix=f"choose another {flag}, or pass --force to replace it.")
        if replaceable is not None and not replaceable(path):
            raise ModelproveError(f"exists and is not a modelprove {what}; --force replaces only an earlier {what}.",
                                  path=path, fix=f"choose another {flag}.")
    return path


def is_verdict_file(path: Path) -> bool:
    """Whether ``path`` holds a verdict saved by modelprove: one with the verdict format, or a record of
    the first verdict layout (no format field; method, setting, suspect and the decision)."""
    try:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    if not isinstance(record, dict):
        return False
    if "format" in record:
        return record["format"] == VERDICT_FORMAT
    return (all(isinstance(record.get(key), str) for key in ("method", "setting", "suspect", "decision"))
            and isinstance(record.get("stolen"), bool))


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)  # hard links and symlinks too
    return a.absolute().resolve() == b.absolute().resolve()


def check_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` must be a directory we may write in (the rest is created)."""
    ancestor = path.absolute().parent
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ModelproveError(f"cannot be created: {ancestor} is a file, not a directory.", path=path,
                              fix=f"give {flag} a path in a directory.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise ModelproveError(f"cannot be written: the directory {ancestor} is not writable.", path=path,
                              fix=f"give {flag} a path in a directory you may write to.")
