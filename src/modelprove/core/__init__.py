"""Conventions shared by every layer: errors, seeding, progress and safe file I/O."""

from modelprove.core.errors import (
    DataError,
    ModelFileError,
    ModelproveError,
    ProtectionError,
    SuspectError,
)
from modelprove.core.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from modelprove.core.seeding import generator

__all__ = [
    "DataError",
    "ModelFileError",
    "ModelproveError",
    "ProtectionError",
    "SuspectError",
    "atomic_write_bytes",
    "atomic_write_json",
    "generator",
    "read_json",
    "sha256_file",
]
