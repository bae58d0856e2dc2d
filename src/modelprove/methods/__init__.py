"""Ownership methods, found by name through one registry (the CLI, the benchmark and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelprove.core.errors import ModelproveError
from modelprove.methods import cae, ipguard, move


@dataclass(frozen=True)
class MethodSpec:
    name: str
    access: tuple[str, ...]  # suspect access levels the verification works with, preferred first
    config: type
    protect: Callable[..., Any]
    verify: Callable[..., Any]
    open: Callable[..., Any]
    description: str
    # Options ``verify`` accepts (``modelprove verify --set``); the rest of the config defines the protection.
    verify_options: tuple[str, ...] = ()
    # Extra inputs ``protect`` takes as keyword paths besides the data: "model" (an already trained
    # source model to fingerprint, CAE) and "logo" (blind watermark). The CLI's --model / --logo.
    inputs: tuple[str, ...] = ()


METHODS: dict[str, MethodSpec] = {
    "move": MethodSpec("move", move.ACCESS, move.MoveConfig, move.protect, move.verify, move.open_protection,
                       "MOVE: style-transfer external features; meta-classifier on gradient signs (white-box) or "
                       "on probability differences under augmentations (black-box) (Li et al. 2022)",
                       verify_options=move.VERIFY_OPTIONS),
    "cae": MethodSpec("cae", cae.ACCESS, cae.CaeConfig, cae.protect, cae.verify, cae.open_protection,
                      "CAE: conferrable adversarial examples of an already trained source model; CAEAcc > rho, "
                      "label-only (Lukas et al. 2021)", verify_options=cae.VERIFY_OPTIONS, inputs=("model",)),
    "ipguard": MethodSpec("ipguard", ipguard.ACCESS, ipguard.IpguardConfig, ipguard.protect, ipguard.verify,
                          ipguard.open_protection, "IPGuard: points near the source's classification boundary; "
                          "matching rate > rho, label-only (Cao et al. 2021)", verify_options=ipguard.VERIFY_OPTIONS,
                          inputs=("model",)),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ModelproveError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}.")
    return METHODS[name]
