"""One in-memory image classification dataset: uint8 pixels, int64 labels, class names.

Tensors are shared, not copied, between a dataset and what is derived from it cheaply
(``with_images`` keeps the labels tensor), so callers must treat them as read-only: build new
tensors instead of writing into ``images`` or ``labels`` in place.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from modelprove.core.errors import DataError

IndexLike = torch.Tensor | Sequence[int]


@dataclass
class ImageDataset:
    """Images ``(N, C, H, W)`` uint8 with C in {1, 3}, labels ``(N,)`` int64 in ``[0, len(classes))``.

    ``indices[i]`` is the position of row ``i`` in the original source split (``arange(N)`` for a
    fresh load), so any subset can be traced back to the file it came from. Omit it for a fresh
    dataset.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    indices: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        where = f"dataset {self.name!r}"
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            got = _describe(images)
            raise DataError(f"{where}: images must be a uint8 tensor (N, C, H, W), got {got}.")
        if images.shape[1] not in (1, 3):
            raise DataError(
                f"{where}: images must have 1 (grey) or 3 (RGB) channels in dim 1, got shape "
                f"{tuple(images.shape)}.",
                fix="pass channels-first images (N, C, H, W).",
            )
        if images.shape[2] < 1 or images.shape[3] < 1:
            raise DataError(f"{where}: images have an empty side, shape {tuple(images.shape)}.")
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(f"{where}: labels must be an int64 tensor (N,), got {_describe(labels)}.")
        if labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{where}: {images.shape[0]} images but {labels.shape[0]} labels; they must match."
            )
        if not self.classes:
            raise DataError(f"{where}: the list of class names is empty.")
        if len(set(self.classes)) != len(self.classes):
            raise DataError(f"{where}: class names repeat: {self.classes}.")
        if labels.numel():
            low, high = int(labels.min()), int(labels.max())
            if low < 0 or high >= len(self.classes):
                raise DataError(
                    f"{where}: labels range over [{low}, {high}] but there are "
                    f"{len(self.classes)} classes; labels must lie in [0, {len(self.classes) - 1}]."
                )
        if self.indices is None:
            self.indices = torch.arange(images.shape[0], dtype=torch.int64)
        elif (
            not isinstance(self.indices, torch.Tensor)
            or self.indices.dtype != torch.int64
            or tuple(self.indices.shape) != (images.shape[0],)
        ):
            raise DataError(
                f"{where}: indices must be an int64 tensor of shape ({images.shape[0]},), "
                f"got {_describe(self.indices)}."
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, n={len(self)}, input_shape={self.input_shape}, "
            f"classes={len(self.classes)})"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        _, c, h, w = self.images.shape
        return int(c), int(h), int(w)

    def subset(self, idx: IndexLike, name: str | None = None) -> ImageDataset:
        """Rows ``idx`` (positions in this dataset) as a new dataset; ``indices`` stay traceable."""
        rows = self._rows(idx)
        return ImageDataset(
            images=self.images[rows],
            labels=self.labels[rows],
            classes=list(self.classes),
            name=name if name is not None else self.name,
            indices=self.indices[rows],
        )

    def fingerprint(self) -> str:
        """A short hash of the pixels and labels: what determines a model trained on this data."""
        digest = hashlib.sha256(self.images.contiguous().numpy().tobytes())
        digest.update(self.labels.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def as_float(self, idx: IndexLike | None = None) -> torch.Tensor:
        """Images (all, or rows ``idx``) as float32 in [0, 1], shape (n, C, H, W)."""
        images = self.images if idx is None else self.images[self._rows(idx)]
        return images.to(torch.float32).div_(255.0)

    def with_images(self, images_uint8: torch.Tensor, name: str) -> ImageDataset:
        """Same labels, classes and indices with new pixels (e.g. a style-transferred copy)."""
        if isinstance(images_uint8, torch.Tensor) and tuple(images_uint8.shape[:1]) != (len(self),):
            raise DataError(
                f"dataset {name!r}: new images must keep the {len(self)} rows of {self.name!r}, "
                f"got shape {tuple(images_uint8.shape)}."
            )
        return ImageDataset(images_uint8, self.labels, list(self.classes), name, self.indices)

    @staticmethod
    def concat(parts: Sequence[ImageDataset], name: str) -> ImageDataset:
        """Rows of every part in order; parts must share class names and image shape.

        ``indices`` are concatenated as they are, so they only identify rows uniquely when all
        parts come from the same source split.
        """
        if not parts:
            raise DataError(f"dataset {name!r}: nothing to concatenate (no parts given).")
        first = parts[0]
        for part in parts[1:]:
            if part.classes != first.classes:
                raise DataError(
                    f"dataset {name!r}: cannot concatenate {part.name!r} (classes {part.classes}) "
                    f"with {first.name!r} (classes {first.classes}); class names must be identical."
                )
            if part.input_shape != first.input_shape:
                raise DataError(
                    f"dataset {name!r}: cannot concatenate {part.name!r} (images "
                    f"{part.input_shape}) with {first.name!r} (images {first.input_shape})."
                )
        return ImageDataset(
            images=torch.cat([p.images for p in parts]),
            labels=torch.cat([p.labels for p in parts]),
            classes=list(first.classes),
            name=name,
            indices=torch.cat([p.indices for p in parts]),
        )

    def _rows(self, idx: IndexLike) -> torch.Tensor:
        rows = torch.as_tensor(idx)
        if rows.dtype == torch.bool:
            if tuple(rows.shape) != (len(self),):
                raise DataError(
                    f"dataset {self.name!r}: a boolean mask must have shape ({len(self)},), "
                    f"got {tuple(rows.shape)}."
                )
            return rows.nonzero().flatten()
        if rows.numel() == 0:
            return torch.empty(0, dtype=torch.int64)
        if rows.is_floating_point() or rows.is_complex() or rows.dim() != 1:
            raise DataError(
                f"dataset {self.name!r}: row indices must be a 1-D sequence of integers, "
                f"got {_describe(rows)}."
            )
        rows = rows.to(torch.int64)
        low, high = int(rows.min()), int(rows.max())
        if low < -len(self) or high >= len(self):
            raise DataError(
                f"dataset {self.name!r}: row index out of range [{low}, {high}] for {len(self)} rows."
            )
        return rows


def seeded_share(data: ImageDataset, fraction: float, seed: int) -> ImageDataset:
    """A seeded random ``fraction`` of ``data``'s rows (at least one), in their original order."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"dataset {data.name!r}: a share must be in (0, 1], got {fraction}.")
    keep = max(1, round(fraction * len(data)))
    rows = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:keep].sort().values
    return data.subset(rows, name=f"{data.name}[{fraction:g}]")


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor of shape {tuple(value.shape)}"
    return type(value).__name__
