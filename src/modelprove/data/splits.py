"""Defender / attacker / test splits: disjoint by construction, class-balanced, seeded."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import torch

from modelprove.core.errors import DataError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.data.sources import load_dataset


@dataclass
class DataSplits:
    """The three datasets every method and attack works with."""

    defender: ImageDataset  # the owner's private training data
    attacker: ImageDataset  # a disjoint part of the training set an adversary may hold
    test: ImageDataset


def make_splits(
    train: ImageDataset,
    test: ImageDataset,
    attacker_fraction: float = 0.5,
    seed: int = 0,
    defender_limit: int | None = None,
    attacker_limit: int | None = None,
    test_limit: int | None = None,
) -> DataSplits:
    """Split ``train`` into disjoint defender and attacker parts; optionally cap every part.

    Each class is shuffled on its own and cut so that the attacker gets ``attacker_fraction`` of
    it (largest-remainder rounding over classes, so the total is ``round(fraction * N)`` and each
    class is within one sample of its share). A limit keeps the first ``n`` of a part class by
    class in the same proportions, so a smaller part is a subset of a larger one with the same
    seed. Each part's seed is drawn once from ``seed``: a limit on one part never changes another.
    """
    fraction = attacker_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not 0 < fraction < 1:
        raise DataError(f"attacker_fraction must be a number strictly between 0 and 1, got {fraction!r}.")
    if test.classes != train.classes:
        raise DataError(
            f"train {train.name!r} and test {test.name!r} have different classes: "
            f"{train.classes} vs {test.classes}."
        )
    if test.input_shape != train.input_shape:
        raise DataError(
            f"train {train.name!r} has images {train.input_shape} but test {test.name!r} "
            f"has {test.input_shape}."
        )
    n_attacker = round(len(train) * fraction)
    if not 0 < n_attacker < len(train):
        raise DataError(
            f"attacker_fraction {fraction} of {len(train)} training images leaves the "
            "defender or the attacker with nothing.",
            fix="use a larger dataset or fraction.",
        )

    seeds = torch.randint(0, 2**62, (5,), generator=generator(seed)).tolist()
    train_classes = _shuffled_by_class(train, generator(seeds[0]))
    quotas = _allocate([len(c) for c in train_classes], n_attacker)
    attacker = [rows[:q] for rows, q in zip(train_classes, quotas)]
    defender = [rows[q:] for rows, q in zip(train_classes, quotas)]
    test_classes = _shuffled_by_class(test, generator(seeds[1]))

    return DataSplits(
        defender=_part(train, defender, defender_limit, "defender_limit", seeds[2], f"{train.name}:defender"),
        attacker=_part(train, attacker, attacker_limit, "attacker_limit", seeds[3], f"{train.name}:attacker"),
        test=_part(test, test_classes, test_limit, "test_limit", seeds[4], test.name),
    )


def load_splits(
    name_or_path: str | Path,
    data: str | Path | None = None,
    attacker_fraction: float = 0.5,
    seed: int = 0,
    *,
    download: bool = False,
    defender_limit: int | None = None,
    attacker_limit: int | None = None,
    test_limit: int | None = None,
) -> DataSplits:
    """Load a dataset's train and test splits (see :func:`load_dataset`) and :func:`make_splits` them."""
    train = load_dataset(name_or_path, "train", data=data, download=download)
    test = load_dataset(name_or_path, "test", data=data, download=download)
    return make_splits(train, test, attacker_fraction, seed, defender_limit, attacker_limit, test_limit)


def _part(
    source: ImageDataset, rows: list[torch.Tensor], limit: int | None, what: str, seed: int, name: str
) -> ImageDataset:
    """The (limited) per-class rows of ``source`` as one dataset, classes interleaved at random."""
    order = torch.cat(_limit(rows, limit, what))
    return source.subset(order[torch.randperm(len(order), generator=generator(seed))], name=name)


def _shuffled_by_class(dataset: ImageDataset, gen: torch.Generator) -> list[torch.Tensor]:
    """For each class, its row positions in ``dataset`` in a random order."""
    perm = torch.randperm(len(dataset), generator=gen)
    labels = dataset.labels[perm]
    return [perm[labels == c] for c in range(dataset.num_classes)]


def _allocate(sizes: list[int], n: int) -> list[int]:
    """Split ``n`` over classes in proportion to ``sizes`` (largest remainder, exact integers)."""
    total = sum(sizes)
    quotas = [n * s // total for s in sizes]
    remainders = [n * s % total for s in sizes]
    # Ties go to the lower class index: deterministic, and never more than one extra per class.
    for i in sorted(range(len(sizes)), key=lambda i: -remainders[i])[: n - sum(quotas)]:
        quotas[i] += 1
    return quotas


def _limit(rows: list[torch.Tensor], limit: int | None, what: str) -> list[torch.Tensor]:
    if limit is None:
        return rows
    available = sum(len(r) for r in rows)
    if isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 1:
        raise DataError(f"{what} must be a positive whole number, got {limit!r}.")
    if limit > available:
        raise DataError(
            f"{what}={limit} but only {available} images are available for that part.",
            fix=f"use {what} <= {available}, or leave it unset to use them all.",
        )
    quotas = _allocate([len(r) for r in rows], int(limit))
    return [r[:q] for r, q in zip(rows, quotas)]
