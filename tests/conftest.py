"""Shared fixtures: a tiny synthetic image task the tests make themselves (no downloads, no Debian data)."""

from __future__ import annotations

import math

import pytest
import torch

from modelprove.data.dataset import ImageDataset


def make_bars(n: int, seed: int, size: int = 28, classes: int = 4, name: str = "bars") -> ImageDataset:
    """Class k is a bright bar at angle k*180/classes degrees, randomly shifted, on a noisy background."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=g)]
    ys, xs = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    images = torch.empty(n, 1, size, size)
    for i, k in enumerate(labels.tolist()):
        angle = math.pi * k / classes
        cx, cy = (size / 2 + torch.randint(-4, 5, (2,), generator=g)).tolist()
        distance = ((xs - cx) * math.sin(angle) - (ys - cy) * math.cos(angle)).abs()
        along = ((xs - cx) * math.cos(angle) + (ys - cy) * math.sin(angle)).abs()
        bar = ((distance < 2.0) & (along < size / 3)).float()
        images[i, 0] = (0.8 * bar + 0.15 * torch.rand(size, size, generator=g)).clamp(0, 1)
    return ImageDataset(
        images=(images * 255).round().to(torch.uint8),
        labels=labels.long(),
        classes=[f"bar{k}" for k in range(classes)],
        name=name,
        indices=torch.arange(n),
    )


def save_npz_task(root, defender: ImageDataset, test: ImageDataset) -> None:
    """The CLI's protect reads a dataset path: ``defender`` and ``test`` saved as bars_train.npz and
    bars_test.npz in ``root``."""
    import numpy as np

    for part, name in ((defender, "bars_train.npz"), (test, "bars_test.npz")):
        np.savez(root / name, x=part.images.numpy(), y=part.labels.numpy())


@pytest.fixture(scope="session")
def bars_task():
    """(defender, attacker, test): disjoint draws of the bars task."""
    return make_bars(800, 0, name="bars-defender"), make_bars(800, 1, name="bars-attacker"), make_bars(400, 2, name="bars-test")


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module of tiny-model tests: they gain nothing from a second thread, and
    on a shared 2-core machine oversubscribed threads made them 5-10x slower (measured: a 2-iteration
    zero-shot run took 16 s with 2 threads, 1.2 s with 1, under a load average of 6)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_panel(tmp_path_factory):
    """A small null panel (4 models of each of two architectures, 3 epochs), trained once per session in a
    shared store: every protection of the bars task is calibrated on the same honest models."""
    from modelprove.methods.panel import PanelConfig

    return PanelConfig(size=4, architectures="lenet5,cnn_small", epochs=3,
                       store=str(tmp_path_factory.mktemp("panels")))
