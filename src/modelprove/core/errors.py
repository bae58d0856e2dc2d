"""Errors meant for people: each names the file, the field, what was expected and the fix.

The CLI prints ``str(error)`` as one line and exits non-zero, so messages must stand alone. A fix
that differs between the Python API and the command line (``overwrite=True`` there, ``--force`` here)
is given twice: ``fix`` for the API, ``cli_fix`` for the CLI, which prints :meth:`ModelproveError.for_cli`.
"""

from __future__ import annotations

from pathlib import Path


class ModelproveError(Exception):
    """Base of every error a user can act on."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None,
                 cli_fix: str | None = None):
        # A URL (a remote suspect) stays as written: Path would fold its "//".
        self.path = (path if isinstance(path, str) and "://" in path else Path(path)) if path is not None else None
        self.message = message
        self.fix = fix
        self.cli_fix = cli_fix
        super().__init__(self._text(fix))

    def for_cli(self) -> str:
        """The message with the command line's fix (``--force``), where it differs from the API's."""
        return self._text(self.cli_fix or self.fix)

    def _text(self, fix: str | None) -> str:
        text = f"{self.path}: {self.message}" if self.path is not None else self.message
        return f"{text} Fix: {fix}" if fix else text


class DataError(ModelproveError):
    """A dataset is missing, malformed, or does not fit what was asked."""


class ModelFileError(ModelproveError):
    """A model file (weights + card) is missing, unsafe, corrupted or inconsistent."""


class ProtectionError(ModelproveError):
    """A protection directory is incomplete, tampered with, or would be overwritten."""


class SuspectError(ModelproveError):
    """A suspect model does not fit the protection it is verified against."""
