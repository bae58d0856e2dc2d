"""Shared fixtures: a tiny synthetic image task the tests make themselves (no downloads, no Debian data).

Two environment variables audit the suite for CPU-fragile tests (CI sets neither). A CPU of another
make (Intel or AMD, AVX-512 or AVX2) sums floats in another order, so a trained model follows another
trajectory; these knobs make the same happen on one machine, and a test that flips under them would
flip on another CPU:

- ``MODELPROVE_TEST_THREADS=N`` runs every test with N torch threads (``single_thread`` included),
  which changes the blocking of oneDNN's and MKL's reductions;
- ``MODELPROVE_TEST_SEED=K`` adds K to every seed given to a ``torch.Generator`` and to
  ``torch.manual_seed`` (data, initialisation, shuffling, augmentation): another draw of every tiny
  task and model.

Setting ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2`` on an
AVX-512 machine runs the kernels an AVX2-only CPU would.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

from modelprove.data.dataset import ImageDataset

AUDIT_THREADS = int(os.environ.get("MODELPROVE_TEST_THREADS", "0"))
AUDIT_SEED = int(os.environ.get("MODELPROVE_TEST_SEED", "0"))


def _shift_every_seed(offset: int) -> None:
    """Make every seeded draw in this process another one (the MODELPROVE_TEST_SEED audit)."""

    class ShiftedGenerator(torch.Generator):
        def manual_seed(self, seed):
            return super().manual_seed(int(seed) + offset)

    manual_seed = torch.manual_seed
    torch.Generator = ShiftedGenerator
    torch.manual_seed = lambda seed: manual_seed(int(seed) + offset)


def pytest_configure(config):
    if AUDIT_THREADS:
        torch.set_num_threads(AUDIT_THREADS)
    elif os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs one pytest-xdist worker process per core: one torch thread each, not two
        # threads per process fighting over the same cores.
        workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if AUDIT_SEED:
        _shift_every_seed(AUDIT_SEED)


def pytest_report_header(config):
    if AUDIT_THREADS or AUDIT_SEED:
        return f"fragility audit: torch threads {AUDIT_THREADS or 'default'}, seed offset {AUDIT_SEED}"
    return None


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
    torch.set_num_threads(AUDIT_THREADS or 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_panel(tmp_path_factory):
    """A small null panel (4 models of each of two architectures, 3 epochs), trained once per session in a
    shared store: every protection of the bars task is calibrated on the same honest models."""
    from modelprove.methods.panel import PanelConfig

    return PanelConfig(size=4, architectures="lenet5,cnn_small", epochs=3,
                       store=str(tmp_path_factory.mktemp("panels")))


@pytest.fixture(autouse=True, scope="session")
def _panels_never_in_the_users_home(tmp_path_factory):
    """A protect call that names no panel store uses $MODELPROVE_PANELS: in tests, a session directory."""
    import os

    before = os.environ.get("MODELPROVE_PANELS")
    os.environ["MODELPROVE_PANELS"] = str(tmp_path_factory.mktemp("default-panels"))
    yield
    if before is None:
        os.environ.pop("MODELPROVE_PANELS", None)
    else:
        os.environ["MODELPROVE_PANELS"] = before
