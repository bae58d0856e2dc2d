"""The one trainer: victims, benign models, surrogates and every attack train through it.

SGD with momentum (the MOVE paper's setting, Sec. 6.1) or Adam, a cosine learning-rate schedule
without restart, tensor augmentations from :mod:`modelprove.data.augment`, a seed for every random
draw (shuffling, augmentation, initialisation), and a progress bar.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from modelprove.core.errors import ModelproveError
from modelprove.core.progress import task
from modelprove.core.seeding import generator
from modelprove.data.augment import AUGMENTATIONS
from modelprove.data.dataset import ImageDataset
from modelprove.models.classifier import predict_labels

# A loss takes (logits, batch indices into the dataset, batch labels) so that distillation-style
# attacks can look up soft targets by index while plain training ignores the indices.
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TrainConfig:
    """How to train; every field is recorded in the model card's training record."""

    epochs: int = 8
    batch_size: int = 128
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant"] = "cosine"
    augmentation: str = "crop"
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ModelproveError(f"epochs must be >= 0, got {self.epochs}.")
        if self.batch_size < 1:
            raise ModelproveError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.lr <= 0:
            raise ModelproveError(f"lr must be positive, got {self.lr}.")
        if self.optimizer not in ("sgd", "adam"):
            raise ModelproveError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}.")
        if self.schedule not in ("cosine", "constant"):
            raise ModelproveError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}.")
        if self.augmentation not in AUGMENTATIONS:
            raise ModelproveError(
                f"unknown augmentation {self.augmentation!r}; known: {', '.join(sorted(AUGMENTATIONS))}."
            )


@dataclass
class TrainRecord:
    """What happened: the config, the data, the final loss and the time it took."""

    config: dict
    dataset: str
    samples: int
    final_loss: float
    seconds: float
    images_per_second: float
    history: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def cross_entropy(logits: torch.Tensor, index: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    del index
    return F.cross_entropy(logits, labels)


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True
    )


def train(
    model: nn.Module,
    data: ImageDataset,
    config: TrainConfig | None = None,
    *,
    loss_fn: LossFn = cross_entropy,
    description: str = "train",
    show_progress: bool = True,
) -> TrainRecord:
    """Train ``model`` in place on ``data`` (images are read as float in [0, 1])."""
    config = config or TrainConfig()
    if len(data) == 0:
        raise ModelproveError(f"cannot train on an empty dataset ({data.name}).")
    if config.threads:
        torch.set_num_threads(config.threads)
    rng = generator(config.seed)
    augment = AUGMENTATIONS[config.augmentation]
    optimizer = _optimizer(model, config)
    steps_per_epoch = math.ceil(len(data) / config.batch_size)
    total_steps = max(1, steps_per_epoch * config.epochs)
    scheduler = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
        if config.schedule == "cosine"
        else None
    )
    images = data.images
    labels = data.labels
    history: list[float] = []
    start = time.perf_counter()
    model.train()
    last = float("nan")
    with task(description, total_steps, enabled=show_progress) as bar:
        for epoch in range(config.epochs):
            order = torch.randperm(len(data), generator=rng)
            running, seen = 0.0, 0
            for step in range(steps_per_epoch):
                index = order[step * config.batch_size : (step + 1) * config.batch_size]
                x = augment(images[index].float().div_(255), rng)
                logits = model(x)
                loss = loss_fn(logits, index, labels[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None:
                    scheduler.step()
                running += loss.item() * len(index)
                seen += len(index)
                bar.advance(status=f"epoch {epoch + 1}/{config.epochs} loss {running / seen:.3f}")
            last = running / seen
            history.append(round(last, 5))
    model.eval()
    seconds = time.perf_counter() - start
    processed = len(data) * config.epochs
    return TrainRecord(
        config=asdict(config),
        dataset=data.name,
        samples=len(data),
        final_loss=last,
        seconds=round(seconds, 2),
        images_per_second=round(processed / seconds, 1) if seconds > 0 else 0.0,
        history=history,
    )


def evaluate(model: nn.Module, data: ImageDataset, batch_size: int = 1024) -> float:
    """Top-1 accuracy on ``data``."""
    if len(data) == 0:
        raise ModelproveError(f"cannot evaluate on an empty dataset ({data.name}).")
    return (predict_labels(model, data.as_float(), batch_size) == data.labels).float().mean().item()


def agreement(model_a: nn.Module, model_b: nn.Module, data: ImageDataset, batch_size: int = 1024) -> float:
    """Fidelity: the fraction of ``data`` on which two models give the same top-1 label."""
    images = data.as_float()
    return (predict_labels(model_a, images, batch_size) == predict_labels(model_b, images, batch_size)).float().mean().item()
