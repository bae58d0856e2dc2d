"""What the query-only attacks add to :mod:`modelprove.attacks._shared`: the surrogate's training
settings and a transfer set built from stored victim answers (the soft-target losses are
training.students', shared with the defender's surrogates).

Vocabulary (MOVE Sec. 2.1, CAE Sec. 5): the *victim* answers queries; the attacker's *transfer set*
is the images it sends with the answers it gets, each image queried once and the answer stored;
the *surrogate* (student) is trained on it and becomes the *suspect* the defender later examines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelprove.attacks._shared import check, check_training
from modelprove.core.progress import progress_default
from modelprove.data.dataset import ImageDataset
from modelprove.models import ARCHITECTURES, Classifier
from modelprove.training import TrainConfig, TrainRecord, train
from modelprove.training.trainer import LossFn, cross_entropy


@dataclass
class SurrogateConfig:
    """Fields every query-only attack shares.

    ``arch``: the surrogate's architecture (None: the victim's if known, else cnn_small); ``epochs``,
    ``lr``, ``batch_size``: the trainer's SGD with momentum and cosine schedule; ``augmentation``:
    one of the trainer's (none, crop, crop_flip).
    """

    arch: str | None = None
    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    augmentation: str = "crop"
    seed: int = 0

    def __post_init__(self) -> None:
        check(self, "arch", self.arch is None or self.arch in ARCHITECTURES,
              f"a registered architecture ({', '.join(sorted(ARCHITECTURES))}) or unset", "cnn_small")
        check_training(self)

    def train_config(self, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=self.epochs if epochs is None else epochs, lr=self.lr, batch_size=self.batch_size,
                           augmentation=self.augmentation, seed=self.seed)


def relabelled(data: ImageDataset, labels: torch.Tensor, classes: list[str], name: str) -> ImageDataset:
    """The same images (shared, not copied) with stored victim labels: the surrogate's transfer set."""
    return ImageDataset(data.images, labels.long(), classes, name, data.indices)


def fit(student: Classifier, data: ImageDataset, config: SurrogateConfig, *, loss_fn: LossFn = cross_entropy,
        description: str, epochs: int | None = None) -> TrainRecord:
    """Train the surrogate with the one trainer; progress bars only on a terminal."""
    return train(student, data, config.train_config(epochs), loss_fn=loss_fn, description=description,
                 show_progress=progress_default())
