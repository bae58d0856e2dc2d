"""What the query-only attacks share: a transfer set (attacker images + the victim's answers, each
image queried once and the answers stored), the surrogate's training settings, and its training
through the one trainer.

Vocabulary (MOVE Sec. 2.1, CAE Sec. 5): the *victim* answers queries; the attacker's *transfer set*
is the images it sends with the answers it gets; the *surrogate* (student) is trained on it and
becomes the *suspect* the defender later examines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelprove.access import LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import progress_default
from modelprove.data.augment import AUGMENTATIONS
from modelprove.data.dataset import ImageDataset
from modelprove.models import ARCHITECTURES, Classifier
from modelprove.training import TrainConfig, TrainRecord, train
from modelprove.training.trainer import LossFn, cross_entropy

QUERY_CHUNK = 4096  # images converted to float per query call: bounds memory on CIFAR-sized sets


@dataclass
class SurrogateConfig:
    """How the surrogate is trained: fields every query-only attack shares.

    ``arch``: the surrogate's architecture (None: the victim's if known, else cnn_small); ``epochs``,
    ``lr``, ``batch_size``: SGD with momentum and a cosine schedule (the trainer's); ``augmentation``:
    one of the trainer's (none, crop, crop_flip).
    """

    arch: str | None = None
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        name = type(self).__name__
        if self.arch is not None and self.arch not in ARCHITECTURES:
            raise ModelproveError(
                f"{name}.arch must be a registered architecture; got {self.arch!r}.",
                fix=f"use one of {', '.join(sorted(ARCHITECTURES))}, or leave arch unset.",
            )
        _at_least(name, "epochs", self.epochs, 1)
        _at_least(name, "batch_size", self.batch_size, 1)
        if not self.lr > 0:
            raise ModelproveError(f"{name}.lr must be > 0; got {self.lr}.", fix="use e.g. lr=0.05.")
        if self.augmentation not in AUGMENTATIONS:
            raise ModelproveError(
                f"{name}.augmentation must be one of {', '.join(sorted(AUGMENTATIONS))}; got {self.augmentation!r}."
            )

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=self.epochs if epochs is None else epochs, lr=self.lr, batch_size=self.batch_size,
                           augmentation=self.augmentation, seed=self.seed)


def _at_least(owner: str, field: str, value: int, low: int) -> None:
    if value < low:
        raise ModelproveError(f"{owner}.{field} must be >= {low}; got {value}.", fix=f"set {field} to {low} or more.")


def check_fraction(owner: str, field: str, value: float, *, low_open: bool = True, high_open: bool = False) -> None:
    """``value`` in (0, 1] by default; the interval's ends are named in the message."""
    low_ok = value > 0 if low_open else value >= 0
    high_ok = value < 1 if high_open else value <= 1
    if not (low_ok and high_ok):
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ModelproveError(f"{owner}.{field} must lie in {interval}; got {value}.")


def require_data(attacker_data: ImageDataset | None, attack: str) -> ImageDataset:
    if attacker_data is None or len(attacker_data) == 0:
        raise ModelproveError(
            f"the {attack} attack needs attacker images to query the victim with; none were given.",
            fix="pass the attacker split (modelprove steal --data ...).",
        )
    return attacker_data


def query_labels(victim: LabelOnlyAccess, images: ImageDataset | torch.Tensor) -> torch.Tensor:
    """The victim's top-1 label for every image, each sent exactly once (N queries)."""
    return _query(victim.labels, images)


def query_probabilities(victim, images: ImageDataset | torch.Tensor) -> torch.Tensor:
    """The victim's probability vector for every image, each sent exactly once (N queries)."""
    return _query(victim.probabilities, images)


def _query(ask, images: ImageDataset | torch.Tensor) -> torch.Tensor:
    count = len(images)
    parts = []
    for start in range(0, count, QUERY_CHUNK):
        rows = torch.arange(start, min(start + QUERY_CHUNK, count))
        batch = images.as_float(rows) if isinstance(images, ImageDataset) else images[rows]
        parts.append(ask(batch))
    return torch.cat(parts) if parts else torch.empty(0)


def class_names(victim: LabelOnlyAccess, data: ImageDataset) -> list[str]:
    """The attacker's class names when its data is of the victim's task, else neutral names."""
    if data.num_classes == victim.num_classes:
        return list(data.classes)
    return [f"class{k}" for k in range(victim.num_classes)]


def relabelled(data: ImageDataset, labels: torch.Tensor, classes: list[str], name: str) -> ImageDataset:
    """The same images (shared, not copied) with new labels: the transfer set the surrogate trains on."""
    return ImageDataset(data.images, labels.long(), classes, name, data.indices)


def soft_target_loss(targets: torch.Tensor) -> LossFn:
    """KL(targets[index] || softmax(logits)), batch mean: the surrogate matches stored probability vectors.

    Its gradient equals that of cross-entropy with soft labels (they differ by the targets' entropy,
    a constant), so it serves MOVE's logit-query (KL) and Jagielski's soft-label training alike.
    """

    def loss(logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        del labels
        return F.kl_div(F.log_softmax(logits, dim=1), targets[index], reduction="batchmean")

    return loss


def fit(student: Classifier, data: ImageDataset, config: SurrogateConfig, *, loss_fn: LossFn = cross_entropy,
        description: str, epochs: int | None = None) -> TrainRecord:
    """Train the surrogate with the one trainer; bars only on a terminal."""
    return train(student, data, config.train_config(epochs), loss_fn=loss_fn, description=description,
                 show_progress=progress_default())
