"""Ownership methods, found by name through one registry (the CLI, the benchmark and the tests).

Each entry is an :class:`~modelprove.methods.base.OwnershipMethod`: its module writes the protection
and measures evidence; protect (with the null panel) and verify (with the decision rules) are shared.
"""

from __future__ import annotations

from modelprove.core.errors import ModelproveError
from modelprove.methods import (
    badnets, blind_watermark, cae, dataset_inference, entangled, gradient_matching, ipguard, key_watermarks, move,
    sac,
)
from modelprove.methods.base import OwnershipMethod

MethodSpec = OwnershipMethod  # the name the CLI and bench knew it by

METHODS: dict[str, OwnershipMethod] = {method.name: method for method in (
    move.MOVE,
    badnets.BADNETS,
    gradient_matching.GRADIENT_MATCHING,
    entangled.ENTANGLED,
    dataset_inference.DATASET_INFERENCE,
    blind_watermark.BLIND_WATERMARK,
    *key_watermarks.WATERMARKS.values(),
    cae.CAE,
    ipguard.IPGUARD,
    sac.SAC_W,
    sac.SAC_M,
)}


def get_method(name: str) -> OwnershipMethod:
    if name not in METHODS:
        raise ModelproveError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}.")
    return METHODS[name]
