"""What every key-sample (backdoor-style) watermark shares: the stored key set and its verification.

The blind watermark (Li et al., ACSAC 2019) and its baselines (Adi et al. 2018; Zhang et al. 2018:
content, noise, unrelated) all verify the same way (blind-watermark Sec. 4.2, Eq. 4): query the
suspect g with the key samples x_key and measure acc_g = V(g, x_key, t_key), the fraction answered
with the pre-defined labels t_key; ownership is claimed iff acc_g > T_acc. Only top-1 labels are
needed (label-only access).

The key set is ``keys.safetensors`` in the protection: ``images`` (uint8 key samples, what is sent to
the suspect), ``targets`` (t_key), and, where they exist, ``originals`` (the clean images x the key
samples were made from) and ``indices`` (their rows in the source split). The public reference code of
the blind watermark lost the target labels; without them a key set proves nothing, so a protection
whose key file has no ``targets`` is refused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modelprove.access import LABEL_ONLY, LabelOnlyAccess, WhiteBoxAccess, require_access
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.core.verdict import Verdict
from modelprove.data.dataset import ImageDataset
from modelprove.methods.common import dataset_info
from modelprove.methods.protection import Protection, ProtectionWriter
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_labels, save_model
from modelprove.stats import binomial_greater

KEYS_FILE = "keys.safetensors"
HOST_FILE = "host.safetensors"
VERIFY_OPTIONS = ("t_acc", "significance")


@dataclass
class KeySet:
    """Key samples (uint8, N x C x H x W) with their pre-defined labels t_key, and optional sources."""

    images: torch.Tensor
    targets: torch.Tensor
    originals: torch.Tensor | None = None
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ModelproveError(f"key samples must be uint8 (N, C, H, W), got {self.images.dtype} {tuple(self.images.shape)}.")
        if self.targets.dtype != torch.int64 or tuple(self.targets.shape) != (len(self.images),):
            raise ModelproveError(f"key targets must be int64 ({len(self.images)},), got {self.targets.dtype} "
                                  f"{tuple(self.targets.shape)}.")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def as_float(self) -> torch.Tensor:
        return self.images.float().div(255)

    def save(self, writer: ProtectionWriter) -> None:
        tensors = {"images": self.images.contiguous(), "targets": self.targets.contiguous()}
        if self.originals is not None:
            tensors["originals"] = self.originals.contiguous()
        if self.indices is not None:
            tensors["indices"] = self.indices.contiguous()
        save_file(tensors, str(writer.path(KEYS_FILE)))


def load_key_set(protection: Protection) -> KeySet:
    """The protection's key set; refuses one without target labels (they are the evidence)."""
    path = protection.path(KEYS_FILE)
    tensors = load_file(str(path))
    if "targets" not in tensors:
        raise ProtectionError(
            f"{KEYS_FILE} holds key samples but no 'targets' (their pre-defined labels t_key): without them the "
            "key accuracy acc_g cannot be measured and the key samples prove nothing (the public reference code "
            "of the blind watermark lost these labels).",
            path=path,
            fix="restore the protection from a backup that has the labels, or protect the model again.",
        )
    if "images" not in tensors:
        raise ProtectionError(f"{KEYS_FILE} has no 'images' (the key samples).", path=path,
                              fix="protect the model again.")
    try:
        return KeySet(tensors["images"], tensors["targets"], tensors.get("originals"), tensors.get("indices"))
    except ModelproveError as exc:
        raise ProtectionError(f"{KEYS_FILE}: {exc}", path=path, fix="protect the model again.") from None


@dataclass
class OpenedKeyWatermark:
    """A key-sample watermark protection loaded for verification."""

    protection: Protection
    method: str
    keys: KeySet
    host_card: ModelCard
    config: Any  # the method's config dataclass

    def host(self) -> Classifier:
        model, _ = load_model(self.protection.path(HOST_FILE))
        return model


def open_key_watermark(directory, method: str, config_type: type) -> OpenedKeyWatermark:
    protection = Protection.open_for(directory, method)
    _, card = load_model(protection.path(HOST_FILE))
    return OpenedKeyWatermark(protection, method, load_key_set(protection), card, protection.config_as(config_type))


def save_host_and_keys(writer: ProtectionWriter, method: str, host: Classifier, training: dict, keys: KeySet,
                       defender: ImageDataset, test: ImageDataset, results: dict) -> None:
    """What every key-sample watermark's protection holds: the host (with its training record), the
    key set, and the manifest's dataset, results and access records."""
    save_model(host, card_for(host, defender.classes, training, {"kind": "host", "method": method}),
               writer.path(HOST_FILE))
    keys.save(writer)
    writer.record(dataset=dataset_info(defender, test), results=results, access=[LABEL_ONLY])


def key_accuracy(model: Classifier, keys: KeySet) -> float:
    """acc of a local model on (x_key, t_key): the study's shortcut around query accounting."""
    return (predict_labels(model, keys.as_float()) == keys.targets).float().mean().item()


def verify_key_watermark(
    opened: OpenedKeyWatermark,
    suspect: LabelOnlyAccess | Classifier,
    *,
    setting: str | None = None,
    seed: int = 0,
    suspect_name: str | None = None,
    **options,
) -> Verdict:
    """acc_g = V(g, x_key, t_key) (blind-watermark Eq. 4); stolen iff acc_g > T_acc.

    The decision is the paper's threshold rule. Alongside it the verdict reports an exact one-sided
    binomial p-value of the successes against chance agreement 1/K (K classes), so verdicts read
    alike across methods; ``significance`` is only the level that p is reported against. Every key
    sample is queried once (``seed`` is recorded but nothing is sampled). Options: ``t_acc``,
    ``significance`` (``alpha``, the CLI's name for the significance level, is accepted too).
    """
    if options.get("alpha") is not None and options.get("significance") is None:
        options["significance"] = options["alpha"]
    options.pop("alpha", None)
    unknown = sorted(k for k in options if k not in VERIFY_OPTIONS)
    if unknown:
        raise ModelproveError(
            f"{opened.method} verification has no option {', '.join(unknown)}; it takes {', '.join(VERIFY_OPTIONS)}.",
            fix="other parameters define the protection; protect again to change them.",
        )
    t_acc = options.get("t_acc") if options.get("t_acc") is not None else opened.config.t_acc
    significance = options.get("significance") if options.get("significance") is not None else opened.config.significance
    if not 0.0 <= t_acc < 1.0:
        raise ModelproveError(f"t_acc must be in [0, 1), got {t_acc}.")
    if isinstance(suspect, Classifier):
        suspect = WhiteBoxAccess(suspect, name=suspect_name or "suspect")
    if setting not in (None, LABEL_ONLY, "black-box", "white-box"):
        raise ModelproveError(f"{opened.method} verifies at any access level; got setting {setting!r}.")
    require_access(suspect, LABEL_ONLY, f"{opened.method} verification")
    card = opened.host_card
    suspect.check_input(card.input_shape, card.num_classes, what=f"the protection {opened.protection.directory}")
    start = time.perf_counter()
    before = suspect.queries
    answers = suspect.labels(opened.keys.as_float())
    successes = int((answers == opened.keys.targets).sum())
    n = len(opened.keys)
    test = binomial_greater(successes, n, 1.0 / card.num_classes)
    return Verdict(
        method=opened.method,
        setting=LABEL_ONLY,
        suspect=suspect_name or suspect.name,
        stolen=test.rate > t_acc,
        p_value=test.p_value,
        alpha=significance,
        effect=test.rate,
        effect_name="key_accuracy",
        samples=n,
        queries=suspect.queries - before,
        seconds=round(time.perf_counter() - start, 3),
        hashes=opened.protection.hashes(host_weights=HOST_FILE, keys=KEYS_FILE),
        details={
            "decision_rule": "key_accuracy > T_acc",
            "T_acc": t_acc,
            "binomial_p_value": test.p_value,
            "significant_at_alpha": test.p_value < significance,
            "successes": successes,
            "chance": test.chance,
            "seed": seed,
            "suspect_access": suspect.level,
        },
    )
