"""Suspect (and victim) access: white-box, black-box and label-only, with query accounting.

A method declares the least access its verification needs; an attack declares the access it is
entitled to. Both receive one of these objects, never more than its level offers:

- :class:`LabelOnlyAccess` answers ``labels(images)`` (top-1 only);
- :class:`BlackBoxAccess` adds ``probabilities(images)`` (probability vectors);
- :class:`WhiteBoxAccess` adds ``model`` (weights, so gradients are available).

A suspect may be a model file, an ONNX file, a Python callable, or a model behind an Open Inference
Protocol server (:mod:`modelprove.access.remote`). Images are float tensors in [0, 1], shaped (N, C, H, W). Every call counts the images sent as
queries and can enforce a budget; outputs from outside code are checked before anyone uses them.
"""

from modelprove.access.levels import (
    ACCESS_LEVELS,
    BLACK_BOX,
    LABEL_ONLY,
    WHITE_BOX,
    BlackBoxAccess,
    LabelOnlyAccess,
    QueryBudgetError,
    SuspectAccess,
    WhiteBoxAccess,
    local_access,
    require_access,
    restrict,
)
from modelprove.access.open import onnx_access, open_suspect, suspect_file_hashes, suspect_files
from modelprove.access.remote import RemoteError, is_remote, remote_access

__all__ = [
    "ACCESS_LEVELS",
    "BLACK_BOX",
    "LABEL_ONLY",
    "WHITE_BOX",
    "BlackBoxAccess",
    "LabelOnlyAccess",
    "QueryBudgetError",
    "RemoteError",
    "SuspectAccess",
    "WhiteBoxAccess",
    "local_access",
    "onnx_access",
    "is_remote",
    "open_suspect",
    "remote_access",
    "require_access",
    "restrict",
    "suspect_file_hashes",
    "suspect_files",
]
