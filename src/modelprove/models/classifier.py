"""A registered architecture plus its input normalisation: images in [0, 1] in, logits out."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from modelprove.models.architectures import ArchitectureError, build_architecture

DEFAULT_MEAN = 0.5
DEFAULT_STD = 0.25


class Classifier(nn.Module):
    """``net`` applied to ``(x - mean) / std``.

    Normalisation lives inside the model so every caller (trainer, attacks, per-sample gradients,
    black-box queries) feeds the same [0, 1] images. ``mean`` and ``std`` are non-persistent
    buffers: the model card is their one record, and the weights file holds only learned tensors.
    ``source`` is the file the model was loaded from (None for a model made in memory).
    """

    mean: Tensor
    std: Tensor

    def __init__(
        self,
        arch: str,
        in_channels: int,
        num_classes: int,
        input_size: Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
    ):
        super().__init__()
        self.arch = arch
        self.source: str | None = None  # the model file it was loaded from (load_model sets it), for errors
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        if len(mean) != in_channels or len(std) != in_channels or min(std) <= 0:
            raise ArchitectureError(
                f"mean and std need one value per channel ({in_channels}) and std > 0; "
                f"got mean={list(mean)}, std={list(std)}."
            )
        self.net = build_architecture(arch, self.in_channels, self.num_classes, self.input_size)
        shape = (self.in_channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, input=[{self.in_channels}, {self.input_size[0]}, "
            f"{self.input_size[1]}], num_classes={self.num_classes}"
        )


def build_model(
    arch: str,
    in_channels: int,
    num_classes: int,
    input_size: Sequence[int],
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Classifier:
    """A freshly initialised ``Classifier``; ``mean``/``std`` default to 0.5/0.25 per channel."""
    return Classifier(
        arch,
        in_channels,
        num_classes,
        input_size,
        mean=list(mean) if mean is not None else [DEFAULT_MEAN] * in_channels,
        std=list(std) if std is not None else [DEFAULT_STD] * in_channels,
    )


@torch.no_grad()
def predict_logits(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Logits of ``images`` (N, C, H, W) in eval mode, batch by batch; the model's mode is restored."""
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        outputs = [model(batch.to(device)).float().cpu() for batch in images.split(batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(outputs)


def predict_proba(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Softmax probabilities (N, K) in eval mode, without gradients."""
    return predict_logits(model, images, batch_size).softmax(dim=1)


def predict_labels(model: nn.Module, images: Tensor, batch_size: int = 512) -> Tensor:
    """Top-1 labels (N,) as int64, in eval mode, without gradients."""
    return predict_logits(model, images, batch_size).argmax(dim=1)
