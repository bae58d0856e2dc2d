"""Ownership methods, found by name through one registry (the CLI, the benchmark and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelprove.core.errors import ModelproveError
from modelprove.methods import move


@dataclass(frozen=True)
class MethodSpec:
    name: str
    access: str  # the suspect access the verification needs: white-box, black-box or label-only
    config: type
    protect: Callable[..., Any]
    verify: Callable[..., Any]
    open: Callable[..., Any]
    description: str


METHODS: dict[str, MethodSpec] = {
    "move": MethodSpec("move", move.ACCESS, move.MoveConfig, move.protect, move.verify, move.open_protection,
                       "MOVE: style-transfer external features + gradient-sign meta-classifier (Li et al. 2022)"),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ModelproveError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}.")
    return METHODS[name]
