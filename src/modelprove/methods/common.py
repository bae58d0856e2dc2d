"""What the ownership methods share: a fresh model for the defender's task, the checks their configs
and ``protect`` functions repeat, the verification preamble, and the verdict of a one-sided t-test.

Each piece was written out by hand in several methods (MOVE, BadNets, EWE, Dataset Inference, the
key-sample and fingerprint methods) with the same logic; one copy keeps their behaviour identical.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Protocol

import torch

from modelprove.access import BLACK_BOX, WHITE_BOX, LabelOnlyAccess, WhiteBoxAccess, require_access
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.core.verdict import Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.methods.protection import Protection
from modelprove.models import Classifier, ModelCard, build_model
from modelprove.training import TrainConfig


def fresh_model(arch: str, data: ImageDataset, seed: int) -> Classifier:
    """A new ``arch`` classifier for ``data``'s task, normalised with its pixel statistics (from at most
    10,000 images) and initialised after ``torch.manual_seed(seed)``."""
    channels, height, width = data.input_shape
    sample = data.as_float(torch.arange(min(len(data), 10000)))
    mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    torch.manual_seed(seed)
    return build_model(arch, channels, data.num_classes, (height, width), mean=mean, std=std)


def check_same_task(defender: ImageDataset, test: ImageDataset) -> None:
    """``protect`` needs defender and test data of one task: the same input shape and classes."""
    if defender.input_shape != test.input_shape or defender.classes != test.classes:
        raise ModelproveError(
            f"the defender data {defender.name} {defender.input_shape} and test data {test.name} "
            f"{test.input_shape} do not describe the same task."
        )


def dataset_info(defender: ImageDataset, test: ImageDataset, **extra: Any) -> dict[str, Any]:
    """The manifest's ``dataset`` record: which data made the protection (and method-specific counts)."""
    return {"defender": defender.name, "defender_size": len(defender), "test": test.name,
            "classes": defender.classes, "input_shape": list(defender.input_shape), **extra}


class TrainsModels:
    """For method configs with the trainer's fields (epochs, batch_size, lr, augmentation, seed)."""

    epochs: int
    batch_size: int
    lr: float
    augmentation: str
    seed: int

    def train_config(self, seed: int | None = None, epochs: int | None = None) -> TrainConfig:
        """The trainer's settings for a model of this method (seed and epochs default to the config's)."""
        return TrainConfig(epochs=self.epochs if epochs is None else epochs, batch_size=self.batch_size, lr=self.lr,
                           augmentation=self.augmentation, seed=self.seed if seed is None else seed)


def check_t_test_fields(config: Any, test: str = "a paired t-test") -> None:
    """The checks of the verification fields m, m_black_box (per setting) and alpha."""
    for name in ("m", "m_black_box"):
        if getattr(config, name) < 2:
            raise ModelproveError(f"{name} must be at least 2 for {test}, got {getattr(config, name)}.")
    if not 0.0 < config.alpha < 1.0:
        raise ModelproveError(f"alpha must be in (0, 1), got {config.alpha}.")


def verification_config(config: Any, options: dict, verify_options: tuple[str, ...], who: str) -> Any:
    """The protection's ``config`` with the verifier's ``options`` (only VERIFY_OPTIONS) applied; the
    config's own checks validate the new values."""
    unknown = sorted(set(options) - set(verify_options))
    if unknown:
        raise ModelproveError(
            f"{who} verification has no option {', '.join(unknown)}; it takes {', '.join(verify_options)}.",
            fix=f"other {who} parameters define the protection; protect again to change them.",
        )
    return replace(config, **{k: v for k, v in options.items() if v is not None})


def open_suspect(
    suspect: LabelOnlyAccess | Classifier,
    *,
    suspect_name: str | None,
    setting: str | None,
    access: tuple[str, ...],
    who: str,
    card: ModelCard,
    protection: Protection,
    needs: dict[str, str] | None = None,
    settings: str | None = None,
) -> tuple[LabelOnlyAccess, str, str]:
    """The suspect as an access level (a bare model is white-box), its name, and the setting to verify
    in: white-box when the suspect offers its weights, else black-box, unless ``setting`` says.

    The suspect must offer ``needs[setting]`` (default: the setting itself) and the victim's input
    shape and classes. ``settings`` names the settings in the error (default: ``access``).
    """
    if isinstance(suspect, Classifier):
        suspect = WhiteBoxAccess(suspect, name=suspect_name or "suspect")
    name = suspect_name or suspect.name
    if setting is None:
        setting = WHITE_BOX if suspect.level == WHITE_BOX else BLACK_BOX
    if setting not in access:
        raise ModelproveError(f"{who} verifies {settings or ' or '.join(access)}, not {setting!r}.")
    require_access(suspect, (needs or {}).get(setting, setting), f"{who} {setting} verification")
    suspect.check_input(card.input_shape, card.num_classes, what=f"the protection {protection.directory}")
    return suspect, name, setting


def draw_rows(config: Any, setting: str, pool_size: int, seed: int, *,
              what: str = "images of the verification pool", remedy: str = "") -> torch.Tensor:
    """The rows of one verification: m of them (``config.m`` white-box, ``config.m_black_box`` else),
    drawn at random by ``seed`` from a pool of ``pool_size``, which must hold them."""
    m = config.m if setting == WHITE_BOX else config.m_black_box
    if m > pool_size:
        raise ModelproveError(f"m = {m} exceeds the {pool_size} {what}.", fix=f"use m <= {pool_size}{remedy}.")
    return torch.randperm(pool_size, generator=generator(seed))[:m]


class TTest(Protocol):
    """A one-sided t-test's result (stats.PairedTTest, or dataset_inference's Welch test)."""

    p_value: float
    delta_mu: float
    statistic: float
    degenerate: bool


def t_test_verdict(
    test: TTest,
    *,
    method: str,
    setting: str,
    suspect: LabelOnlyAccess,
    name: str,
    alpha: float,
    samples: int,
    start: float,
    queries_before: int,
    protection: Protection,
    seed: int,
    details: dict[str, Any],
) -> Verdict:
    """The verdict of a one-sided t-test of H0: mu_suspect <= mu_reference (MOVE Sec. 5.4, Eq. 9):
    stolen iff p < alpha, effect delta_mu. Queries count only when the suspect was queried (not
    white-box); ``start`` is the ``time.perf_counter()`` at which verification began; ``details`` (the
    method's own values) are followed by the test's statistic, the seed and the suspect's access."""
    return Verdict(
        method=method,
        setting=setting,
        suspect=name,
        stolen=test.p_value < alpha,
        p_value=test.p_value,
        alpha=alpha,
        effect=test.delta_mu,
        effect_name="delta_mu",
        samples=samples,
        queries=suspect.queries - queries_before if setting != WHITE_BOX else None,
        seconds=round(time.perf_counter() - start, 3),
        hashes=protection.hashes(victim_weights="victim.safetensors"),
        details={
            **details,
            "t_statistic": test.statistic,
            "degenerate": test.degenerate,
            "seed": seed,
            "suspect_access": suspect.level,
        },
    )
