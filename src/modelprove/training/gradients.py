"""Per-sample gradients of the loss w.r.t. a model's weights, reduced to a bounded feature vector.

Used by MOVE's white-box features g_M(x') = sign(grad_theta L(M(x'), y)) (MOVE Sec. 5.3, Eq. 5).
Computed with ``torch.func`` (functional_call + vmap(grad)) in chunks, in eval mode (BatchNorm uses
its running statistics, so one sample's gradient never depends on its batch-mates).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from modelprove.core.errors import ModelproveError, SuspectError

# How a weight tensor's per-sample gradient becomes features:
# - "spatial_max": conv kernels (out, in, kh, kw) are max-pooled over (kh, kw), as the public MOVE
#   reference does, so features grow with channels, not kernel area; other weights are kept whole.
#   One feature per (pooled) weight: the features are tied to the order of the model's hidden units.
# - "none": every element of every kept weight.
# - "layer_sign_stats": after spatial_max, each weight tensor contributes two numbers, the fraction
#   of its gradient signs that are positive and the fraction that are zero. They do not change when
#   hidden units are permuted, so a meta-classifier cannot separate models by the arbitrary order of
#   their units; docs/results/move-false-accusations.md measures why that matters.
# - "reference": the public MOVE code's layout (collect_grads of zlh-thu/StealingVerification): conv
#   kernels whose out x in channels exceed REFERENCE_POOL_LIMIT are skipped, the others max-pooled over
#   (kh, kw); a 2-D weight with more than REFERENCE_POOL_LIMIT elements is max-pooled over its last
#   dimension (cnn_small's fc1 of 128 x 512 gives 128 numbers), a smaller one kept whole.
Reduction = Literal["layer_sign_stats", "spatial_max", "reference", "none"]
REDUCTIONS: tuple[str, ...] = ("layer_sign_stats", "spatial_max", "reference", "none")
REFERENCE_POOL_LIMIT = 5000  # the reference's pool_thresh on out x in channels


@dataclass(frozen=True)
class GradientFeatureSpec:
    """Which weights feed the features and how they are reduced (documented MOVE parameters)."""

    reduction: Reduction = "spatial_max"
    signed: bool = True  # MOVE's g = sign(grad); False keeps raw gradients (the paper's ablation)
    min_ndim: int = 2  # keep multi-dimensional weights only (conv kernels, linear matrices), as the reference

    def __post_init__(self) -> None:
        if self.reduction not in REDUCTIONS:
            raise ModelproveError(f"unknown gradient reduction {self.reduction!r}; known: {', '.join(REDUCTIONS)}.")
        if self.reduction == "layer_sign_stats" and not self.signed:
            raise ModelproveError("the 'layer_sign_stats' reduction summarises gradient signs; it needs signed features.")

    def selected(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {name: p for name, p in model.named_parameters() if p.ndim >= self.min_ndim
                and not (self.reduction == "reference" and p.ndim == 4 and _channels(p.shape) > REFERENCE_POOL_LIMIT)}

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        """One weight's per-sample gradients (B, *weight_shape) -> features (B, n): signs or values."""
        if self.reduction != "none" and per_sample.ndim == 5:
            per_sample = per_sample.amax(dim=(3, 4))
        elif self.reduction == "reference" and per_sample.ndim == 3 and _channels(per_sample.shape[1:]) > REFERENCE_POOL_LIMIT:
            per_sample = per_sample.amax(dim=2)
        flat = per_sample.flatten(start_dim=1)
        if self.reduction == "layer_sign_stats":
            return torch.stack([(flat > 0).float().mean(dim=1), (flat == 0).float().mean(dim=1)], dim=1)
        return torch.sign(flat) if self.signed else flat

    def layout(self, model: nn.Module) -> list[tuple[str, int]]:
        """(parameter name, feature count) in feature order: the contract between victim and suspect."""
        out = []
        for name, p in self.selected(model).items():
            if self.reduction == "layer_sign_stats":
                count = 2
            elif self.reduction == "reference" and p.ndim == 2 and _channels(p.shape) > REFERENCE_POOL_LIMIT:
                count = p.shape[0]
            else:
                shape = p.shape[:2] if (self.reduction in ("spatial_max", "reference") and p.ndim == 4) else p.shape
                count = int(torch.tensor(shape).prod())
            out.append((name, count))
        return out

    def dimension(self, model: nn.Module) -> int:
        return sum(count for _, count in self.layout(model))


def _channels(shape: torch.Size) -> int:
    """out x in of a weight's shape (out, in, ...)."""
    return int(shape[0]) * int(shape[1])


def per_sample_gradient_features(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: GradientFeatureSpec = GradientFeatureSpec(),
    chunk_size: int = 32,
) -> Iterator[torch.Tensor]:
    """Yield the features of each chunk of images: per-sample gradients reduced by ``spec``.

    ``images`` are floats in [0, 1]; memory stays bounded by ``chunk_size`` times the weight count.
    """
    if len(images) != len(labels):
        raise ModelproveError(f"{len(images)} images but {len(labels)} labels.")
    was_training = model.training
    model.eval()
    weights = {k: v.detach() for k, v in spec.selected(model).items()}
    if not weights:
        raise ModelproveError("the model has no multi-dimensional weights to take gradients of.")
    others = {
        k: v.detach() for k, v in list(model.named_parameters()) + list(model.named_buffers()) if k not in weights
    }

    def sample_loss(w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**w, **others}, (x.unsqueeze(0),))
        return F.cross_entropy(logits, y.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    try:
        for start in range(0, len(images), chunk_size):
            x = images[start : start + chunk_size].float()
            y = labels[start : start + chunk_size].long()
            grads = per_sample(weights, x, y)
            _check_finite(grads, model, start)
            yield torch.cat([spec.reduce(grads[name]) for name in weights], dim=1)
    finally:
        model.train(was_training)


def _check_finite(grads: dict[str, torch.Tensor], model: nn.Module, start: int) -> None:
    """Refuse NaN or infinite per-sample gradients before they are reduced: sign() maps inf to +-1 and
    the layer statistics map NaN to 0, so a broken model (in practice a suspect: e.g. a card whose
    normalisation overflows, or an infinite weight) would otherwise give finite, meaningless features."""
    bad = torch.zeros(len(next(iter(grads.values()))), dtype=torch.bool)
    for g in grads.values():
        bad |= ~torch.isfinite(g.flatten(start_dim=1)).all(dim=1)
    if bad.any():
        first = start + int(bad.nonzero()[0])
        raise SuspectError(
            f"the model's per-sample gradients are NaN or infinite for {int(bad.sum())} of {len(bad)} images "
            f"(first: image {first}); its features would be meaningless.",
            path=getattr(model, "source", None),
            fix="check the model's weights and its card's normalisation (mean, std).",
        )


def gradient_features(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: GradientFeatureSpec = GradientFeatureSpec(),
    chunk_size: int = 32,
) -> torch.Tensor:
    """g_M(x') for every image; per-weight signs are stored as int8 (a quarter of float32's memory)."""
    compact = spec.signed and spec.reduction != "layer_sign_stats"
    parts = [
        f.to(torch.int8) if compact else f.float()
        for f in per_sample_gradient_features(model, images, labels, spec, chunk_size)
    ]
    return torch.cat(parts)
