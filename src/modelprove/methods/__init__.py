"""Ownership methods, found by name through one registry (the CLI, the benchmark and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelprove.core.errors import ModelproveError
from modelprove.methods import blind_watermark, key_watermarks, move


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
    "blind-watermark": MethodSpec("blind-watermark", blind_watermark.ACCESS, blind_watermark.BlindWatermarkConfig,
                                  blind_watermark.protect, blind_watermark.verify, blind_watermark.open_protection,
                                  "Blind watermark: encoder-made key samples near ordinary images, from the owner's "
                                  "logo; key accuracy with label-only access (Li et al. 2019)",
                                  verify_options=blind_watermark.VERIFY_OPTIONS, inputs=("logo",)),
    **{name: MethodSpec(name, key_watermarks.ACCESS, key_watermarks.CONFIGS[kind], key_watermarks.protect,
                        key_watermarks.verify, key_watermarks.open_protection, description,
                        verify_options=key_watermarks.VERIFY_OPTIONS)
       for kind, name, description in key_watermarks.REGISTRY},
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ModelproveError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}.")
    return METHODS[name]
