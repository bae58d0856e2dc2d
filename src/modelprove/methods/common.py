"""What the ownership methods share: a fresh model for the defender's task, the checks their configs
and ``protect`` functions repeat, and the verification preamble.

Each piece was written out by hand in several methods (MOVE, BadNets, EWE, Dataset Inference, the
key-sample and fingerprint methods) with the same logic; one copy keeps their behaviour identical.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from modelprove.access import ACCESS_LEVELS, LabelOnlyAccess, WhiteBoxAccess, require_access
from modelprove.core.errors import ModelproveError
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


def check_sequential_fields(config: Any) -> None:
    """The checks of the sequential verification fields (see OwnershipMethod.verify_rules)."""
    if config.sequential_batch < 1:
        raise ModelproveError(f"sequential_batch must be at least 1 image, got {config.sequential_batch}.")
    margin = getattr(config, "margin", 0.0)
    if not margin <= config.sequential_clear < 1.0:
        raise ModelproveError(
            f"sequential_clear must be in [margin, 1) = [{margin}, 1), got {config.sequential_clear}: a suspect is "
            "cleared once its mean paired difference is known to be below it.")


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
    needs = needs or {}
    if setting is None:  # the first setting (preferred first) whose needs the suspect's access meets
        offered = [s for s in access if ACCESS_LEVELS.index(suspect.level) >= ACCESS_LEVELS.index(needs.get(s, s))]
        setting = offered[0] if offered else access[-1]
    if setting not in access:
        raise ModelproveError(f"{who} verifies {settings or ' or '.join(access)}, not {setting!r}.")
    require_access(suspect, needs.get(setting, setting), f"{who} {setting} verification")
    suspect.check_input(card.input_shape, card.num_classes, what=f"the protection {protection.directory}")
    return suspect, name, setting
