"""Errors meant for people: each names the file, the field, what was expected and the fix.

The CLI prints ``str(error)`` as one line and exits non-zero, so messages must stand alone.
"""

from __future__ import annotations

from pathlib import Path


class ModelproveError(Exception):
    """Base of every error a user can act on."""

    def __init__(self, message: str, *, path: str | Path | None = None, fix: str | None = None):
        # A URL (a remote suspect) stays as written: Path would fold its "//".
        self.path = (path if isinstance(path, str) and "://" in path else Path(path)) if path is not None else None
        self.fix = fix
        text = f"{self.path}: {message}" if self.path is not None else message
        if fix:
            text = f"{text} Fix: {fix}"
        super().__init__(text)


class DataError(ModelproveError):
    """A dataset is missing, malformed, or does not fit what was asked."""


class ModelFileError(ModelproveError):
    """A model file (weights + card) is missing, unsafe, corrupted or inconsistent."""


class ProtectionError(ModelproveError):
    """A protection directory is incomplete, tampered with, or would be overwritten."""


class SuspectError(ModelproveError):
    """A suspect model does not fit the protection it is verified against."""
