"""A protection directory: everything ``verify`` needs, with a manifest of hashes (DESIGN.md).

It is staged in a hidden sibling directory and renamed into place only when complete, so a crash
never leaves a half-written protection; an existing protection is never overwritten silently (with
``force`` it is kept beside the new one as ``NAME.replaced-<time>``).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import modelprove
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.fileio import atomic_write_json, read_json, sha256_file

MANIFEST = "manifest.json"
FORMAT = "modelprove-protection/1"
_SHA256 = re.compile(r"[0-9a-f]{64}")


class Protection:
    """An opened protection: ``method``, ``manifest`` and ``path(name)`` of its files."""

    def __init__(self, directory: Path, manifest: dict[str, Any]):
        self.directory = directory
        self.manifest = manifest

    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def protection_id(self) -> str:
        """The protection's content digest: sha256 of its canonical manifest (which lists the sha256 of
        every file), so any change to a file or a manifest value changes it. The owner registers it;
        every verdict states the one it checked."""
        return canonical_digest(self.manifest)

    def hashes(self, **files: str) -> dict[str, str]:
        """A verdict's record of its evidence: the manifest's sha256 and, under each given key, the
        sha256 the manifest lists for that file (e.g. ``victim_weights="victim.safetensors"``)."""
        return {"protection_manifest": sha256_file(self.directory / MANIFEST),
                **{key: self.manifest["files"][name] for key, name in files.items()}}

    def config_as(self, config_type: type) -> Any:
        """The saved config as ``config_type`` (a method's config dataclass); manifest keys that are not
        its fields (e.g. records of what was used) are left out."""
        return config_type(**{k: v for k, v in self.config.items() if k in config_type.__dataclass_fields__})

    def path(self, name: str) -> Path:
        if name not in self.manifest.get("files", {}):
            raise ProtectionError(
                f"the manifest lists no file {name!r} (method {self.method}).",
                path=self.directory / MANIFEST,
                fix="re-create the protection with `modelprove protect`.",
            )
        return self.directory / name

    @classmethod
    def open(cls, directory: str | Path, protection_id: str | None = None) -> "Protection":
        """Open and check a protection: the manifest's format, its id (when the owner's registered
        ``protection_id`` is given), and every file's presence and sha256."""
        directory = Path(directory)
        expected_id = check_protection_id(protection_id) if protection_id is not None else None
        if not directory.is_dir():
            raise ProtectionError(
                "protection directory not found.", path=directory, fix="pass the --out directory of `modelprove protect`."
            )
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise ProtectionError(
                f"no {MANIFEST}: this is not a protection directory, or it is incomplete.", path=directory
            )
        try:
            manifest = read_json(manifest_path, what="protection manifest")
        except ModelproveError as exc:
            raise ProtectionError(str(exc)) from None
        for field, kind in (("format", str), ("method", str), ("files", dict)):
            if not isinstance(manifest.get(field), kind):
                raise ProtectionError(
                    f"field {field!r} is missing or not a {kind.__name__}.",
                    path=manifest_path,
                    fix="re-create the protection with `modelprove protect`.",
                )
        if manifest["format"] != FORMAT:
            raise ProtectionError(
                f"field 'format' is {manifest['format']!r}; this modelprove reads {FORMAT!r}.", path=manifest_path
            )
        if expected_id is not None and (found := canonical_digest(manifest)) != expected_id:
            raise ProtectionError(
                f"the protection id is {found}, not the registered {expected_id}: the manifest was changed "
                "(a parameter or a file's hash) after the protection was made, or this is another protection.",
                path=manifest_path,
                fix="restore the protection you registered from your backup; a changed protection proves nothing.",
            )
        for name, expected in manifest["files"].items():
            file = directory / name
            if not file.is_file():
                raise ProtectionError(
                    f"file {name!r} listed in the manifest is missing: the protection is incomplete.",
                    path=directory,
                    fix="restore it from your backup of the protection.",
                )
            actual = sha256_file(file)
            if actual != expected:
                raise ProtectionError(
                    f"file {name!r} does not match its sha256 in the manifest (expected {expected[:12]}…, "
                    f"found {actual[:12]}…): the protection was modified after it was made.",
                    path=directory,
                    fix="restore the original file from your backup; a tampered protection proves nothing.",
                )
        return cls(directory, manifest)

    @classmethod
    def open_for(cls, directory: "str | Path | Protection", method: str) -> "Protection":
        """A protection made by ``method``: a path is opened (and hash-checked), an opened one is checked."""
        protection = directory if isinstance(directory, Protection) else cls.open(directory)
        if protection.method != method:
            raise ProtectionError(f"this protection was made with method {protection.method!r}, not {method!r}.",
                                  path=protection.directory)
        return protection


def canonical_digest(obj: Any) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def reseal(directory: str | Path, **fields: Any) -> dict[str, Any]:
    """Re-hash every file of a protection that is still being made (in its staging directory, never one
    in place) and rewrite its manifest with ``fields`` added: how protect adds the null panel's
    calibration after the method has written its own files."""
    directory = Path(directory)
    manifest = read_json(directory / MANIFEST, what="protection manifest")
    manifest["files"] = {p.name: sha256_file(p) for p in sorted(directory.iterdir())
                         if p.is_file() and p.name != MANIFEST}
    manifest.update(fields)
    atomic_write_json(directory / MANIFEST, manifest)
    return manifest
def check_protection_id(value: str) -> str:
    """A registered protection id: 64 hex digits (any case), returned in lower case."""
    if not isinstance(value, str) or not _SHA256.fullmatch(value.strip().lower()):
        raise ProtectionError(
            f"a protection id is 64 hexadecimal digits (the sha256 printed by protect); got {value!r}.",
            fix="copy the id printed by `modelprove protect` (\"protection id: ...\").",
        )
    return value.strip().lower()


def protection_containing(path: str | Path) -> Path | None:
    """The protection directory that ``path`` is (or lies inside), or None: the directory itself or
    its nearest ancestor holding a modelprove protection manifest."""
    path = Path(path).absolute()
    for directory in (path, *path.parents):
        manifest = directory / MANIFEST
        if manifest.is_file():
            try:
                if read_json(manifest).get("format") == FORMAT:
                    return directory
            except (ModelproveError, AttributeError):  # not JSON, or not an object: someone else's manifest
                pass
    return None


def ensure_writable(directory: str | Path, force: bool = False) -> None:
    """Fail early, before hours of training, if ``directory`` would overwrite a protection or write
    into one, or is not a directory."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise ProtectionError("exists and is not a directory; a protection is a directory.", path=directory,
                              fix="choose another output directory.", cli_fix="choose another --out.")
    if (inside := protection_containing(directory.parent)) is not None:
        raise ProtectionError(
            f"lies inside the protection {inside}; modelprove never writes into a protection directory.",
            path=directory,
            fix="choose a directory outside every protection.",
            cli_fix="choose an --out outside every protection.",
        )
    if directory.exists() and not force:
        raise ProtectionError(
            "already exists; refusing to overwrite a protection.",
            path=directory,
            fix="choose another directory, or pass force=True (the old one is kept as NAME.replaced-<time>).",
            cli_fix="choose another --out, or pass --force (the old one is kept as NAME.replaced-<time>).",
        )


def install(staged: Path, directory: Path) -> None:
    """Move a finished protection into place; one already there (``force``) is kept beside it."""
    if directory.exists():
        directory.rename(directory.with_name(f"{directory.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"))
    staged.rename(directory)


@contextmanager
def create_protection(
    directory: str | Path, method: str, config: dict[str, Any], force: bool = False
) -> Iterator["ProtectionWriter"]:
    """Stage a new protection; on success hash every file, write the manifest, and move it into place."""
    directory = Path(directory)
    ensure_writable(directory, force)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".partial", dir=directory.parent))
    writer = ProtectionWriter(staging)
    try:
        yield writer
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "format": FORMAT,
            "method": method,
            "modelprove_version": modelprove.__version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config": config,
            "files": files,
            **writer.extra,
        }
        atomic_write_json(staging / MANIFEST, manifest)
        install(staging, directory)
        writer.directory = directory
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


class ProtectionWriter:
    """Where a method writes its files while the protection is being made."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.extra: dict[str, Any] = {}

    def path(self, name: str) -> Path:
        return self.directory / name

    def record(self, **fields: Any) -> None:
        """Add top-level manifest fields (results, dataset description, ...)."""
        self.extra.update(fields)
