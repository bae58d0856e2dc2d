"""Ownership methods, found by name through one registry (the CLI, the benchmark and the tests)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelprove.core.errors import ModelproveError
from modelprove.methods import (
    badnets, blind_watermark, cae, dataset_inference, entangled, gradient_matching, ipguard, key_watermarks, move,
)


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
    "badnets": MethodSpec("badnets", badnets.ACCESS, badnets.BadNetsConfig, badnets.protect, badnets.verify,
                          badnets.open_protection,
                          "BadNets watermark: 3x3 white square trigger, 10% poisoned to a target label; paired t-test "
                          "of the target-class probability on triggered vs benign images (Gu et al. 2017)",
                          verify_options=badnets.VERIFY_OPTIONS),
    "gradient-matching": MethodSpec("gradient-matching", gradient_matching.ACCESS,
                                    gradient_matching.GradientMatchingConfig, gradient_matching.protect,
                                    gradient_matching.verify, gradient_matching.open_protection,
                                    "Gradient-matching watermark: clean-label poisons crafted so their gradient "
                                    "matches the trigger's (Witches' Brew, Geiping et al. 2021); BadNets' t-test",
                                    verify_options=gradient_matching.VERIFY_OPTIONS),
    "entangled": MethodSpec("entangled", entangled.ACCESS, entangled.EntangledConfig, entangled.protect,
                            entangled.verify, entangled.open_protection,
                            "Entangled Watermarks: triggered source-class images labelled as a target class, entangled "
                            "with it by the soft nearest-neighbour loss; paired t-test triggered vs clean (Jia et al. 2021)",
                            verify_options=entangled.VERIFY_OPTIONS),
    "dataset-inference": MethodSpec("dataset-inference", dataset_inference.ACCESS,
                                    dataset_inference.DatasetInferenceConfig, dataset_inference.protect,
                                    dataset_inference.verify, dataset_inference.open_protection,
                                    "Dataset Inference: distances to every class (MinGD white-box, Blind Walk "
                                    "black-box), a private-vs-public regressor, Welch t-test (Maini et al. 2021)",
                                    verify_options=dataset_inference.VERIFY_OPTIONS),
    "blind-watermark": MethodSpec("blind-watermark", blind_watermark.ACCESS, blind_watermark.BlindWatermarkConfig,
                                  blind_watermark.protect, blind_watermark.verify, blind_watermark.open_protection,
                                  "Blind watermark: encoder-made key samples near ordinary images, from the owner's "
                                  "logo; key accuracy with label-only access (Li et al. 2019)",
                                  verify_options=blind_watermark.VERIFY_OPTIONS, inputs=("logo",)),
    **{name: MethodSpec(name, key_watermarks.ACCESS, key_watermarks.CONFIGS[kind], key_watermarks.protect,
                        key_watermarks.verify, key_watermarks.open_protection, description,
                        verify_options=key_watermarks.VERIFY_OPTIONS)
       for kind, name, description in key_watermarks.REGISTRY},
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
