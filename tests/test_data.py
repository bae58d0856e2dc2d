"""The data layer: every loader on small hand-made files, name resolution, splits, augmentations."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from modelprove.core.errors import DataError
from modelprove.data import (
    AUGMENTATIONS,
    FASHION_MNIST_CLASSES,
    ImageDataset,
    crop_padding,
    fashion_mnist_candidates,
    hflip,
    load_cifar10,
    load_dataset,
    load_idx_folder,
    load_image_folder,
    load_npz,
    load_splits,
    make_splits,
    random_crop,
    random_hflip,
    read_idx,
    sources,
    translate,
)

RNG = np.random.default_rng(1234)


# --------------------------------------------------------------------------- helpers


def write_idx(path: Path, array: np.ndarray, gz: bool | None = None) -> Path:
    """An IDX file of unsigned bytes with a header built by hand."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.uint8).tobytes()
    gz = path.name.endswith(".gz") if gz is None else gz
    path.write_bytes(gzip.compress(blob) if gz else blob)
    return path


def make_idx_folder(folder: Path, n_train=12, n_test=5, gz=True, dotted=False, label_offset=0, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = ((np.arange(n) + label_offset) % 10).astype(np.uint8)
        sep = "." if dotted else "-"
        ext = ".gz" if gz else ""
        write_idx(folder / f"{prefix}-images{sep}idx3-ubyte{ext}", images)
        write_idx(folder / f"{prefix}-labels{sep}idx1-ubyte{ext}", labels)
        arrays[prefix] = (images, labels)
    return arrays


CIFAR_NAMES = [b"cat", b"dog", b"ship"]


def cifar_batches(sizes=(4, 3), n_test=5, seed=0) -> dict[str, tuple[bytes, np.ndarray, list[int]]]:
    """CIFAR-10 python batches in the real dict layout, pickled the way the dataset ships."""
    rng = np.random.default_rng(seed)
    out = {}
    names = [f"data_batch_{i + 1}" for i in range(len(sizes))] + ["test_batch"]
    for name, n in zip(names, [*sizes, n_test]):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 3, n)]
        batch = {
            b"batch_label": name.encode(),
            b"data": data,
            b"labels": labels,
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        out[name] = (pickle.dumps(batch, protocol=2), data, labels)
    meta = {b"label_names": CIFAR_NAMES, b"num_cases_per_batch": 4, b"num_vis": 3072}
    out["batches.meta"] = (pickle.dumps(meta, protocol=2), None, None)
    return out


def write_cifar_dir(folder: Path, batches) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (blob, _, _) in batches.items():
        (folder / name).write_bytes(blob)
    return folder


def write_cifar_tar(path: Path, batches) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, (blob, _, _) in batches.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def expected_cifar(batches, split):
    names = sorted(n for n in batches if n.startswith("data_batch")) if split == "train" else ["test_batch"]
    images = np.concatenate([batches[n][1] for n in names]).reshape(-1, 3, 32, 32)
    labels = sum((batches[n][2] for n in names), [])
    return images, labels


def save_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def toy_dataset(per_class=(20, 20, 20), shape=(1, 4, 4), name="toy/train") -> ImageDataset:
    labels = torch.cat([torch.full((n,), c, dtype=torch.int64) for c, n in enumerate(per_class)])
    images = torch.randint(
        0, 256, (len(labels), *shape), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    return ImageDataset(images, labels, [f"c{i}" for i in range(len(per_class))], name)


@pytest.fixture
def no_dataset_env(monkeypatch, tmp_path):
    """Isolate resolution from the machine: no env vars, Debian and cache in tmp dirs."""
    for var in ("MODELPROVE_FASHION_MNIST", "MODELPROVE_MNIST", "MODELPROVE_CIFAR10", "MODELPROVE_DATA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setitem(sources.DEBIAN_DIRS, "fashion-mnist", tmp_path / "debian" / "fashion-mnist")
    return tmp_path


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trips_gz_and_raw(tmp_path, gz):
    array = RNG.integers(0, 256, (3, 5, 7), dtype=np.uint8)
    path = write_idx(tmp_path / ("x.gz" if gz else "x"), array, gz=gz)
    got = read_idx(path)
    assert got.dtype == np.uint8 and got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got, array)


@pytest.mark.parametrize("gz,dotted", [(True, False), (False, False), (True, True), (False, True)])
def test_load_idx_folder_exact(tmp_path, gz, dotted):
    arrays = make_idx_folder(tmp_path / "digits", gz=gz, dotted=dotted)
    for split, prefix in (("train", "train"), ("test", "t10k")):
        ds = load_idx_folder(tmp_path / "digits", split)
        images, labels = arrays[prefix]
        assert ds.images.dtype == torch.uint8 and ds.images.shape == (len(images), 1, 28, 28)
        assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
        assert ds.labels.dtype == torch.int64 and ds.labels.tolist() == labels.tolist()
        assert ds.classes == [str(i) for i in range(10)]
        assert ds.indices.tolist() == list(range(len(images)))


def test_idx_folder_named_fashion_gets_fashion_classes(tmp_path):
    make_idx_folder(tmp_path / "my-fashion-data")
    assert load_dataset(str(tmp_path / "my-fashion-data"), "test").classes == FASHION_MNIST_CLASSES


def test_idx_truncated_file_names_path(tmp_path):
    path = write_idx(tmp_path / "t.idx", RNG.integers(0, 256, (4, 3, 3), dtype=np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_truncated_gzip_names_path(tmp_path):
    path = write_idx(tmp_path / "t.gz", RNG.integers(0, 256, (40, 9, 9), dtype=np.uint8))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_idx_wrong_magic_and_dtype(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"PK\x03\x04" + bytes(20))
    with pytest.raises(DataError, match="not an IDX file") as info:
        read_idx(bad)
    assert str(bad) in str(info.value)
    ints = tmp_path / "ints"
    ints.write_bytes(struct.pack(">HBBI", 0, 0x0C, 1, 1) + bytes(4))
    with pytest.raises(DataError, match="0x0c"):
        read_idx(ints)


def test_idx_count_mismatch(tmp_path):
    make_idx_folder(tmp_path / "d", n_train=6)
    write_idx(tmp_path / "d" / "train-labels-idx1-ubyte.gz", np.zeros(5, np.uint8))
    with pytest.raises(DataError, match="6 images"):
        load_idx_folder(tmp_path / "d", "train")


# --------------------------------------------------------------------------- CIFAR-10


@pytest.mark.parametrize("form", ["dir", "tar", "parent-of-tar", "parent-of-dir"])
def test_cifar10_dir_and_tar_exact(tmp_path, form):
    batches = cifar_batches()
    if form == "dir":
        path = write_cifar_dir(tmp_path / "batches", batches)
    elif form == "parent-of-dir":
        write_cifar_dir(tmp_path / "c" / "cifar-10-batches-py", batches)
        path = tmp_path / "c"
    else:
        tar = write_cifar_tar(tmp_path / "c" / "cifar-10-python.tar.gz", batches)
        path = tar if form == "tar" else tmp_path / "c"
    for split in ("train", "test"):
        images, labels = expected_cifar(batches, split)
        for ds in (load_cifar10(path, split), load_dataset(str(path), split)):
            assert ds.images.shape == (len(labels), 3, 32, 32)
            assert torch.equal(ds.images, torch.from_numpy(images))
            assert ds.labels.tolist() == labels
            assert ds.classes == ["cat", "dog", "ship"]


def test_cifar10_batch_gap_and_bad_batch(tmp_path):
    batches = cifar_batches(sizes=(2, 2, 2))
    folder = write_cifar_dir(tmp_path / "gap", batches)
    (folder / "data_batch_2").unlink()
    with pytest.raises(DataError, match="data_batch_2 is missing"):
        load_cifar10(folder, "train")
    (folder / "test_batch").write_bytes(
        pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]})
    )
    with pytest.raises(DataError, match="3072") as info:
        load_cifar10(folder, "test")
    assert str(folder / "test_batch") in str(info.value)


# --------------------------------------------------------------------------- image folders


def test_image_folder_grey_exact(tmp_path):
    root = tmp_path / "shapes"
    expected = {}
    for cls in ("zebra", "apple"):  # sorted names are the classes: apple=0, zebra=1
        for i in range(3):
            pixels = RNG.integers(0, 256, (6, 5), dtype=np.uint8)
            save_png(root / cls / f"{i}.png", pixels)
            expected[(cls, i)] = pixels
    (root / "apple" / "notes.txt").write_text("not an image")
    ds = load_image_folder(root)
    assert ds.classes == ["apple", "zebra"] and ds.input_shape == (1, 6, 5)
    order = [("apple", i) for i in range(3)] + [("zebra", i) for i in range(3)]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for row, key in enumerate(order):
        assert torch.equal(ds.images[row, 0], torch.from_numpy(expected[key]))


def test_image_folder_rgb_and_mixed_modes(tmp_path):
    rgb = RNG.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    grey = RNG.integers(0, 256, (4, 4), dtype=np.uint8)
    save_png(tmp_path / "f" / "a" / "0.png", rgb)
    save_png(tmp_path / "f" / "b" / "0.png", grey)
    ds = load_image_folder(tmp_path / "f")
    assert ds.input_shape == (3, 4, 4)
    assert torch.equal(ds.images[0], torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(ds.images[1], torch.from_numpy(grey).expand(3, 4, 4))


def test_image_folder_mixed_sizes_names_odd_file(tmp_path):
    save_png(tmp_path / "f" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    save_png(tmp_path / "f" / "b" / "odd.png", np.zeros((5, 4), np.uint8))
    with pytest.raises(DataError, match="one size") as info:
        load_image_folder(tmp_path / "f")
    assert str(tmp_path / "f" / "b" / "odd.png") in str(info.value)


def test_image_folder_unreadable_image(tmp_path):
    save_png(tmp_path / "f" / "a" / "0.png", np.zeros((4, 4), np.uint8))
    (tmp_path / "f" / "a" / "1.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as info:
        load_image_folder(tmp_path / "f")
    assert str(tmp_path / "f" / "a" / "1.png") in str(info.value)


def test_image_folder_splits(tmp_path):
    root = tmp_path / "pets"
    save_png(root / "train" / "cat" / "0.png", np.full((3, 3), 1, np.uint8))
    save_png(root / "train" / "dog" / "0.png", np.full((3, 3), 2, np.uint8))
    save_png(root / "test" / "dog" / "0.png", np.full((3, 3), 3, np.uint8))  # no cat in test
    test = load_dataset(str(root), "test")
    assert test.classes == ["cat", "dog"] and test.labels.tolist() == [1]
    assert test.images.flatten().tolist() == [3] * 9
    assert load_dataset(str(root), "train").labels.tolist() == [0, 1]

    flat = tmp_path / "flat"
    save_png(flat / "cat" / "0.png", np.zeros((3, 3), np.uint8))
    assert len(load_dataset(str(flat), "train")) == 1
    with pytest.raises(DataError, match="single split") as info:
        load_dataset(str(flat), "test")
    assert str(flat) in str(info.value)


# --------------------------------------------------------------------------- npz


@pytest.mark.parametrize("layout", ["NHWC", "NCHW", "NHW", "NHWC1"])
@pytest.mark.parametrize("as_float", [False, True])
def test_npz_layouts_and_float(tmp_path, layout, as_float):
    channels = 3 if layout in ("NHWC", "NCHW") else 1
    expected = RNG.integers(0, 256, (5, channels, 6, 7), dtype=np.uint8)  # (N, C, H, W)
    stored = {
        "NHWC": expected.transpose(0, 2, 3, 1),
        "NHWC1": expected.transpose(0, 2, 3, 1),
        "NCHW": expected,
        "NHW": expected[:, 0],
    }[layout]
    if as_float:  # off-grid values: conversion must round to the nearest level, not truncate
        jitter = RNG.uniform(-0.45, 0.45, stored.shape)
        stored = (np.clip(stored + jitter, 0, 255) / 255.0).astype(np.float32)
    labels = np.array([0, 2, 1, 2, 0])
    path = tmp_path / "set.npz"
    np.savez(path, x=stored, y=labels, classes=np.array(["a", "b", "c"]))
    ds = load_npz(path)
    assert torch.equal(ds.images, torch.from_numpy(expected))
    assert ds.labels.tolist() == labels.tolist() and ds.classes == ["a", "b", "c"]


def test_npz_images_labels_keys_default_classes_and_sibling(tmp_path):
    np.savez(tmp_path / "d.npz", images=np.zeros((4, 2, 2), np.uint8), labels=np.array([0, 1, 0, 1]))
    np.savez(tmp_path / "d_test.npz", images=np.ones((2, 2, 2), np.uint8), labels=np.array([3, 0]))
    train = load_dataset(str(tmp_path / "d.npz"), "train")
    test = load_dataset(str(tmp_path / "d.npz"), "test")
    # Class names are shared across splits: the test file's label 3 widens both.
    assert train.classes == test.classes == ["0", "1", "2", "3"]
    assert test.images.sum().item() == 8 and test.labels.tolist() == [3, 0]
    assert load_dataset(str(tmp_path / "d_test.npz"), "train").labels.tolist() == [0, 1, 0, 1]


def test_npz_single_split_has_no_test(tmp_path):
    np.savez(tmp_path / "only.npz", x=np.zeros((2, 3, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="only_test.npz") as info:
        load_dataset(str(tmp_path / "only.npz"), "test")
    assert str(tmp_path / "only.npz") in str(info.value)


def test_npz_errors_name_path(tmp_path):
    no_labels = tmp_path / "nolabels.npz"
    np.savez(no_labels, x=np.zeros((2, 3, 3), np.uint8))
    with pytest.raises(DataError, match="labels") as info:
        load_npz(no_labels)
    assert str(no_labels) in str(info.value)

    objects = tmp_path / "objects.npz"
    np.savez(
        objects,
        x=np.zeros((2, 3, 3), np.uint8),
        y=np.array([0, 1]),
        classes=np.array([{"a": 1}], dtype=object),
    )
    with pytest.raises(DataError, match="pickle") as info:
        load_npz(objects)
    assert str(objects) in str(info.value)

    scaled = tmp_path / "scaled.npz"
    np.savez(scaled, x=np.full((2, 3, 3), 200.0), y=np.array([0, 1]))
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        load_npz(scaled)


def test_unknown_format_and_missing_path(tmp_path):
    text = tmp_path / "data.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="unknown dataset format") as info:
        load_dataset(str(text))
    assert str(text) in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="unknown dataset format"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DataError, match="neither a known dataset name"):
        load_dataset(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="split"):
        load_dataset(str(text), "validation")


def test_loads_are_cached_but_independent_and_see_file_changes(tmp_path):
    path = tmp_path / "c.npz"
    np.savez(path, x=np.zeros((3, 2, 2), np.uint8), y=np.array([0, 1, 2]))
    first = load_dataset(str(path))
    first.images.fill_(9)  # a careless caller must not corrupt the next load
    second = load_dataset(str(path))
    assert second.images.sum().item() == 0
    np.savez(path, x=np.ones((3, 2, 2), np.uint8), y=np.array([0, 1, 2]))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    assert load_dataset(str(path)).images.sum().item() == 12


# --------------------------------------------------------------------------- named resolution


def test_fashion_mnist_resolution_order(no_dataset_env, monkeypatch):
    tmp = no_dataset_env
    debian = sources.DEBIAN_DIRS["fashion-mnist"]
    cache = tmp / "xdg-cache" / "modelprove" / "fashion-mnist"
    env_dir, explicit = tmp / "env", tmp / "explicit"
    # Each copy has a different train size, so the size tells which one was loaded.
    make_idx_folder(cache, n_train=4)
    assert len(load_dataset("fashion-mnist")) == 4
    make_idx_folder(debian, n_train=5)
    assert len(load_dataset("fashion-mnist")) == 5
    make_idx_folder(tmp / "shared" / "fashion-mnist", n_train=6)
    monkeypatch.setenv("MODELPROVE_DATA", str(tmp / "shared"))
    assert len(load_dataset("fashion-mnist")) == 6
    make_idx_folder(env_dir, n_train=7)
    monkeypatch.setenv("MODELPROVE_FASHION_MNIST", str(env_dir))
    ds = load_dataset("Fashion-MNIST")
    assert len(ds) == 7 and ds.classes == FASHION_MNIST_CLASSES and ds.name == "fashion-mnist/train"
    make_idx_folder(explicit, n_train=8)
    assert len(load_dataset("fashion-mnist", data=explicit)) == 8
    assert fashion_mnist_candidates() == [env_dir, tmp / "shared" / "fashion-mnist", debian, cache]
    assert fashion_mnist_candidates(explicit)[0] == explicit


def test_explicit_data_does_not_fall_back(no_dataset_env):
    make_idx_folder(sources.DEBIAN_DIRS["fashion-mnist"])
    typo = no_dataset_env / "typo"
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data=typo)
    assert str(typo) in str(info.value) and str(sources.DEBIAN_DIRS["fashion-mnist"]) not in str(info.value)


def test_nothing_found_lists_places_and_fixes(no_dataset_env, monkeypatch):
    monkeypatch.setenv("MODELPROVE_FASHION_MNIST", str(no_dataset_env / "env-dir"))
    (no_dataset_env / "env-dir").mkdir()  # exists but holds no IDX files
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", "test")
    message = str(info.value)
    for place in fashion_mnist_candidates():
        assert str(place) in message
    for fix in (
        "apt-get install -y dataset-fashion-mnist",
        "--data",
        "MODELPROVE_FASHION_MNIST",
        "--download",
    ):
        assert fix in message
    with pytest.raises(DataError, match="MODELPROVE_MNIST") as info:
        load_dataset("mnist")
    assert "apt-get" not in str(info.value)


def test_cifar10_found_in_cache_as_tar(no_dataset_env):
    batches = cifar_batches()
    write_cifar_tar(
        no_dataset_env / "xdg-cache" / "modelprove" / "cifar10" / "cifar-10-python.tar.gz", batches
    )
    ds = load_dataset("cifar10", "test")
    assert ds.name == "cifar10/test" and ds.classes[:3] == ["airplane", "automobile", "bird"]
    assert ds.labels.tolist() == expected_cifar(batches, "test")[1]


def test_download_checks_md5_and_writes_cache(no_dataset_env, monkeypatch):
    folder = no_dataset_env / "served"
    make_idx_folder(folder, n_train=9)
    served = {p.name: p.read_bytes() for p in folder.iterdir()}
    spec = sources.NAMED["mnist"]
    md5s = {name: hashlib.md5(served[name]).hexdigest() for name in spec.files}
    monkeypatch.setitem(sources.NAMED, "mnist", dataclasses.replace(spec, files=md5s))
    requested = []

    def fake_urlopen(url, timeout):
        requested.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources.urllib.request, "urlopen", fake_urlopen)
    with pytest.raises(DataError, match="--download"):
        load_dataset("mnist")
    ds = load_dataset("mnist", download=True)
    assert len(ds) == 9 and ds.name == "mnist/train" and len(requested) == 4
    cache = no_dataset_env / "xdg-cache" / "modelprove" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(spec.files)
    # Files already in place with the right checksum are not fetched again; a damaged one is.
    requested.clear()
    (cache / "t10k-labels-idx1-ubyte.gz").write_bytes(b"damaged")
    sources._download(sources.NAMED["mnist"], cache)
    assert requested == [spec.base_url + "t10k-labels-idx1-ubyte.gz"]
    assert (cache / "t10k-labels-idx1-ubyte.gz").read_bytes() == served["t10k-labels-idx1-ubyte.gz"]

    bad = {name: "0" * 32 for name in spec.files}
    monkeypatch.setitem(sources.NAMED, "mnist", dataclasses.replace(spec, files=bad))
    with pytest.raises(DataError, match="MD5"):
        load_dataset("mnist", data=no_dataset_env / "elsewhere", download=True)
    assert not (no_dataset_env / "elsewhere" / "train-images-idx3-ubyte.gz").exists()


# --------------------------------------------------------------------------- ImageDataset


def test_dataset_validation():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    labels = torch.tensor([0, 1, 1])
    with pytest.raises(DataError, match="uint8"):
        ImageDataset(images.float(), labels, ["a", "b"], "x")
    with pytest.raises(DataError, match="channels"):
        ImageDataset(torch.zeros(3, 2, 2, 2, dtype=torch.uint8), labels, ["a", "b"], "x")
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        ImageDataset(images, torch.tensor([0, 1, 2]), ["a", "b"], "x")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ImageDataset(images, labels[:2], ["a", "b"], "x")
    with pytest.raises(DataError, match="int64"):
        ImageDataset(images, labels.int(), ["a", "b"], "x")


def test_subset_composes_indices_and_as_float():
    ds = toy_dataset()
    inner = ds.subset([5, 3, 7, 40], name="inner").subset(torch.tensor([3, 0]))
    assert inner.indices.tolist() == [40, 5] and inner.name == "inner"
    assert torch.equal(inner.images, ds.images[[40, 5]]) and inner.labels.tolist() == [2, 0]
    floats = ds.as_float([1, 2])
    assert floats.dtype == torch.float32 and 0 <= floats.min() and floats.max() <= 1
    assert torch.allclose(floats * 255, ds.images[[1, 2]].float())
    with pytest.raises(DataError, match="out of range"):
        ds.subset([len(ds)])


def test_with_images_and_concat():
    ds = toy_dataset().subset([4, 30, 50])
    styled = ds.with_images(255 - ds.images, "styled")
    assert styled.indices.tolist() == [4, 30, 50] and torch.equal(styled.labels, ds.labels)
    assert torch.equal(styled.images, 255 - ds.images)
    with pytest.raises(DataError, match="rows"):
        ds.with_images(ds.images[:2], "short")
    both = ImageDataset.concat([ds, styled], "both")
    assert len(both) == 6 and both.indices.tolist() == [4, 30, 50, 4, 30, 50]
    other = ImageDataset(ds.images, ds.labels, ["x", "y", "z"], "other")
    with pytest.raises(DataError, match="class names"):
        ImageDataset.concat([ds, other], "bad")


# --------------------------------------------------------------------------- splits


def class_counts(ds: ImageDataset) -> list[int]:
    return torch.bincount(ds.labels, minlength=ds.num_classes).tolist()


def test_splits_disjoint_cover_and_balanced():
    train, test = toy_dataset((41, 41, 41, 41), name="t/train"), toy_dataset((7, 7, 7, 7), name="t/test")
    splits = make_splits(train, test, attacker_fraction=0.3, seed=3)
    d, a = set(splits.defender.indices.tolist()), set(splits.attacker.indices.tolist())
    assert not d & a and d | a == set(range(len(train)))
    assert len(a) == round(0.3 * len(train)) and len(splits.test) == len(test)
    for part in (splits.defender, splits.attacker, splits.test):
        counts = class_counts(part)
        assert max(counts) - min(counts) <= 1
        assert torch.equal(
            part.labels, train.labels[part.indices] if part is not splits.test else test.labels[part.indices]
        )


def test_splits_imbalanced_classes_keep_proportions():
    train = toy_dataset((50, 10, 3))
    splits = make_splits(train, toy_dataset((5, 5, 5)), attacker_fraction=0.5, seed=0)
    for got, size in zip(class_counts(splits.attacker), (50, 10, 3)):
        assert abs(got - size * 0.5) <= 1


def test_splits_reproducible_per_seed_and_limits():
    train, test = toy_dataset((30, 30, 30)), toy_dataset((10, 10, 10))
    one, again, other = (make_splits(train, test, seed=s) for s in (1, 1, 2))
    assert torch.equal(one.defender.indices, again.defender.indices)
    assert torch.equal(one.attacker.indices, again.attacker.indices)
    assert not torch.equal(one.defender.indices, other.defender.indices)
    limited = make_splits(train, test, seed=1, defender_limit=20, attacker_limit=7, test_limit=11)
    assert (len(limited.defender), len(limited.attacker), len(limited.test)) == (20, 7, 11)
    for part in (limited.defender, limited.attacker, limited.test):
        counts = class_counts(part)
        assert max(counts) - min(counts) <= 1
    assert set(limited.defender.indices.tolist()) <= set(one.defender.indices.tolist())
    # A limit on one part leaves the others exactly as they were.
    only_defender = make_splits(train, test, seed=1, defender_limit=20)
    assert torch.equal(only_defender.attacker.indices, one.attacker.indices)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"attacker_fraction": 0.0},
        {"attacker_fraction": 1.0},
        {"attacker_fraction": True},
        {"defender_limit": 0},
        {"defender_limit": 46},
        {"test_limit": 2.5},
    ],
)
def test_splits_validate(kwargs):
    with pytest.raises(DataError):
        make_splits(toy_dataset((30, 30, 30)), toy_dataset((10, 10, 10)), **kwargs)


def test_splits_reject_mismatched_test():
    with pytest.raises(DataError, match="classes"):
        make_splits(toy_dataset((10, 10)), toy_dataset((10, 10, 10)))


def test_load_splits_from_path(tmp_path):
    np.savez(tmp_path / "s.npz", x=np.zeros((20, 4, 4), np.uint8), y=np.arange(20) % 2)
    np.savez(tmp_path / "s_test.npz", x=np.zeros((6, 4, 4), np.uint8), y=np.arange(6) % 2)
    splits = load_splits(str(tmp_path / "s.npz"), attacker_fraction=0.25, seed=0, test_limit=4)
    assert (len(splits.defender), len(splits.attacker), len(splits.test)) == (15, 5, 4)


# --------------------------------------------------------------------------- augmentations


@pytest.mark.parametrize("dx,dy", [(2, 0), (0, 3), (-1, 2), (3, -4), (0, 0)])
def test_translate_moves_bright_pixel(dx, dy):
    x = torch.zeros(2, 3, 9, 8)
    x[:, :, 4, 3] = 1.0
    out = translate(x, dx, dy)
    assert out.shape == x.shape and out.sum() == x.sum()
    assert torch.all(out[:, :, 4 + dy, 3 + dx] == 1.0)
    assert translate(x, 8, 0).abs().sum() == 0 and translate(x, 0, -9).abs().sum() == 0


def test_random_crop_is_a_per_image_shift():
    x = torch.rand(64, 3, 10, 12)
    padding = 2
    out = random_crop(x, padding, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    shifts = [(dx, dy) for dx in range(-padding, padding + 1) for dy in range(-padding, padding + 1)]
    seen = set()
    for i in range(len(x)):
        match = [s for s in shifts if torch.equal(out[i], translate(x[i : i + 1], *s)[0])]
        assert match, f"image {i} is not a shift of its input"
        seen.add(match[0])
    assert len(seen) > 5  # offsets vary per image


def test_random_crop_reproducible_and_identity():
    x = torch.rand(16, 1, 8, 8)
    a = random_crop(x, 2, torch.Generator().manual_seed(5))
    b = random_crop(x, 2, torch.Generator().manual_seed(5))
    c = random_crop(x, 2, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(random_crop(x, 0, torch.Generator().manual_seed(5)), x)


def test_flips():
    x = torch.rand(32, 3, 5, 6)
    assert torch.equal(hflip(x)[..., 0], x[..., -1])
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=0.0), x)
    assert torch.equal(random_hflip(x, torch.Generator().manual_seed(0), p=1.0), hflip(x))
    mixed = random_hflip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(mixed[i], hflip(x)[i]) for i in range(len(x))]
    kept = [torch.equal(mixed[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)
    assert torch.equal(mixed, random_hflip(x, torch.Generator().manual_seed(0)))


def test_augmentation_registry():
    assert set(AUGMENTATIONS) == {"none", "crop", "crop_flip"}
    assert [crop_padding(h) for h in (28, 32, 64, 5)] == [2, 4, 8, 1]
    x = torch.rand(8, 1, 28, 28)
    assert AUGMENTATIONS["none"](x, torch.Generator()) is x
    for name in ("crop", "crop_flip"):
        out = AUGMENTATIONS[name](x, torch.Generator().manual_seed(0))
        assert out.shape == x.shape and not torch.equal(out, x)
        assert torch.equal(out, AUGMENTATIONS[name](x, torch.Generator().manual_seed(0)))


def test_cifar_pickle_payload_is_refused_before_it_runs(tmp_path):
    import pickle as _pickle

    from modelprove.data.sources import _unpickle_cifar

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    blob = _pickle.dumps({b"data": Payload(), b"labels": [0]})
    with pytest.raises(DataError, match="not allowed"):
        _unpickle_cifar(blob, tmp_path / "data_batch_1")
    assert not marker.exists()
