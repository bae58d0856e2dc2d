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

from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from modelprove.access import LABEL_ONLY, LabelOnlyAccess
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.data.dataset import ImageDataset
from modelprove.methods.base import OwnershipMethod
from modelprove.methods.common import dataset_info
from modelprove.methods.protection import Protection, ProtectionWriter
from modelprove.models import Classifier, ModelCard, card_for, load_model, predict_labels, save_model
from modelprove.stats import Evidence, ThresholdRule

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


class KeySampleMethod(OwnershipMethod):
    """A key-sample watermark's evidence (blind watermark Sec. 4.2, Eq. 4): per key sample, 1 when the
    suspect answers its pre-defined label t_key; the mean is the key accuracy acc_g. The paper's rule is
    acc_g > T_acc (an exact binomial p against chance 1/K is reported beside it). Label-only access."""

    access = (LABEL_ONLY,)
    model_file = HOST_FILE
    verify_options = VERIFY_OPTIONS
    alpha_field = "significance"

    def card(self, opened: OpenedKeyWatermark) -> ModelCard:
        return opened.host_card

    def pool_size(self, opened: OpenedKeyWatermark, config, setting: str) -> int:
        return len(opened.keys)

    def sample_size(self, config, setting: str) -> None:
        return None  # every key sample, once

    def paper_rule(self, opened: OpenedKeyWatermark, config) -> ThresholdRule:
        return ThresholdRule(config.t_acc, name="paper: key accuracy > T_acc (blind watermark Eq. 4)",
                             chance=1.0 / opened.host_card.num_classes)

    def evidence(self, opened: OpenedKeyWatermark, suspect: LabelOnlyAccess, setting: str, config,
                 rows: torch.Tensor | None, *, reference: bool = True) -> Evidence:
        keys = opened.keys
        rows = torch.arange(len(keys)) if rows is None else rows
        answers = suspect.labels(keys.as_float()[rows])
        correct = (answers == keys.targets[rows]).float()
        return Evidence(self.name, LABEL_ONLY, LABEL_ONLY, "key accuracy", correct.numpy(), rows.numpy(), binary=True,
                        details={"successes": int(correct.sum()), "t_acc": config.t_acc})


__all__ = ["HOST_FILE", "KEYS_FILE", "KeySampleMethod", "KeySet", "OpenedKeyWatermark", "key_accuracy",
           "load_key_set", "open_key_watermark", "save_host_and_keys"]
