"""Dataset sources: named datasets (Fashion-MNIST, MNIST, CIFAR-10) and files a user supplies.

Formats read: IDX folders (MNIST layout, gzipped or raw), CIFAR-10's python batches (a folder or
the ``cifar-10-python.tar.gz`` itself), one-sub-folder-per-class image folders, and ``.npz``.
Every loader returns an :class:`ImageDataset`; :func:`load_dataset` picks the right one.

Loaded arrays are cached in-process (the demo loads Fashion-MNIST several times); every call
returns fresh tensor copies, so a caller that writes into one cannot corrupt the next load.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import pickle
import re
import struct
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from modelprove.core.errors import DataError
from modelprove.core.fileio import atomic_write_bytes
from modelprove.core.progress import progress_default, track
from modelprove.data.dataset import ImageDataset

FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
MNIST_CLASSES = [str(digit) for digit in range(10)]
CIFAR10_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Debian packages that ship a dataset, by dataset name (Debian has no MNIST or CIFAR-10 package).
DEBIAN_DIRS: dict[str, Path] = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}

_IDX_PREFIX = {"train": "train", "test": "t10k"}
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_TAR = "cifar-10-python.tar.gz"
_CIFAR_BATCH = re.compile(r"data_batch_(\d+)$")


@dataclass(frozen=True)
class _Named:
    """Where a named dataset may live and how to get it."""

    name: str
    title: str
    env: str
    kind: str  # "idx" or "cifar10"
    classes: tuple[str, ...]
    base_url: str
    files: dict[str, str]  # file name -> MD5 published with the dataset
    apt_package: str | None = None


NAMED: dict[str, _Named] = {
    "fashion-mnist": _Named(
        name="fashion-mnist",
        title="Fashion-MNIST",
        env="MODELPROVE_FASHION_MNIST",
        kind="idx",
        classes=tuple(FASHION_MNIST_CLASSES),
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        apt_package="dataset-fashion-mnist",
    ),
    "mnist": _Named(
        name="mnist",
        title="MNIST",
        env="MODELPROVE_MNIST",
        kind="idx",
        classes=tuple(MNIST_CLASSES),
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        files={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
    ),
    "cifar10": _Named(
        name="cifar10",
        title="CIFAR-10",
        env="MODELPROVE_CIFAR10",
        kind="cifar10",
        classes=tuple(CIFAR10_CLASSES),
        base_url="https://www.cs.toronto.edu/~kriz/",
        files={_CIFAR_TAR: "c58f30108f718f92721af3b95e74349a"},
    ),
}
_ALIASES = {
    "fashion-mnist": "fashion-mnist",
    "fashion_mnist": "fashion-mnist",
    "fashionmnist": "fashion-mnist",
    "fmnist": "fashion-mnist",
    "mnist": "mnist",
    "cifar10": "cifar10",
    "cifar-10": "cifar10",
    "cifar_10": "cifar10",
}


# --------------------------------------------------------------------------- IDX (MNIST layout)


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file of unsigned bytes (type code 0x08), gzipped or raw, as a uint8 array."""
    path = Path(path)
    raw = _read_bytes(path, "IDX file")
    if len(raw) < 4:
        raise DataError(
            f"IDX file is truncated: {len(raw)} bytes, shorter than its 4-byte magic number.",
            path=path,
            fix="download the file again.",
        )
    if raw[:2] != b"\x00\x00" or not 1 <= raw[3] <= 4:
        raise DataError(
            f"not an IDX file: magic number {raw[:4].hex()} (expected 0000 08 0N, e.g. 00000803 "
            "for images and 00000801 for labels).",
            path=path,
            fix="point at the MNIST-format files train-images-idx3-ubyte[.gz] etc.",
        )
    if raw[2] != 0x08:
        raise DataError(
            f"IDX element type is 0x{raw[2]:02x}; only unsigned bytes (0x08) are supported.", path=path
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"IDX file is truncated inside its header ({len(raw)} of {header} bytes).",
            path=path,
            fix="download the file again.",
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != expected:
        state = "truncated" if len(raw) - header < expected else "longer than its header says"
        raise DataError(
            f"IDX file is {state}: header gives shape {dims} = {expected} bytes of data, "
            f"found {len(raw) - header}.",
            path=path,
            fix="download the file again.",
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def idx_files(folder: str | Path, split: str) -> tuple[Path, Path] | None:
    """The (images, labels) IDX files for ``split`` in ``folder``, or None if either is missing.

    Accepts ``train-images-idx3-ubyte`` and the dotted ``train-images.idx3-ubyte`` some mirrors use,
    each raw or ``.gz``.
    """
    folder, prefix = Path(folder), _IDX_PREFIX[_check_split(split)]

    def find(kind: str, idx: str) -> Path | None:
        for stem in (f"{prefix}-{kind}-{idx}-ubyte", f"{prefix}-{kind}.{idx}-ubyte"):
            for name in (stem, f"{stem}.gz"):
                if (folder / name).is_file():
                    return folder / name
        return None

    images, labels = find("images", "idx3"), find("labels", "idx1")
    return (images, labels) if images is not None and labels is not None else None


def load_idx_folder(
    folder: str | Path,
    split: str = "train",
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> ImageDataset:
    """An MNIST-format folder: ``train-*`` files for "train", ``t10k-*`` for "test".

    Without ``classes``, a folder whose name mentions "fashion" gets Fashion-MNIST's class names
    and any other folder gets "0".."9" (at least ten classes, more if the labels go higher).
    """
    folder = Path(folder)
    split = _check_split(split)
    found = idx_files(folder, split)
    if found is None:
        prefix = _IDX_PREFIX[split]
        raise DataError(
            f"no IDX files for the {split} split: expected {prefix}-images-idx3-ubyte[.gz] and "
            f"{prefix}-labels-idx1-ubyte[.gz].",
            path=folder,
            fix="point at the folder that holds the MNIST-format files.",
        )
    image_path, label_path = found
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise DataError(
            f"IDX images must have 3 dimensions (N, H, W), got shape {images.shape}.", path=image_path
        )
    if labels.ndim != 1:
        raise DataError(f"IDX labels must have 1 dimension (N,), got shape {labels.shape}.", path=label_path)
    if len(images) != len(labels):
        raise DataError(
            f"{len(images)} images in {image_path.name} but {len(labels)} labels here.", path=label_path
        )
    if classes is None:
        top = int(labels.max()) + 1 if len(labels) else 0
        fashion = "fashion" in folder.resolve().name.lower() and top <= 10
        classes = FASHION_MNIST_CLASSES if fashion else [str(i) for i in range(max(10, top))]
    return _dataset(images[:, None], labels, classes, name or f"{folder.name}/{split}", label_path)


# --------------------------------------------------------------------------- CIFAR-10


def load_cifar10(
    path: str | Path,
    split: str = "train",
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> ImageDataset:
    """CIFAR-10's python format: a folder with ``data_batch_1..k``, ``test_batch``, ``batches.meta``
    (or its parent holding ``cifar-10-batches-py`` / ``cifar-10-python.tar.gz``), or the tar.gz
    itself, read in one streaming pass without extracting anything to disk.

    Train is every ``data_batch_N`` present (they must run 1..k without gaps; the real dataset has
    five). The batches are Python pickles: this is the one place modelprove unpickles anything, and
    only because it is the dataset's own format; never point it at files you do not trust.
    """
    path = Path(path)
    split = _check_split(split)
    location = _cifar_location(path)
    if location is None:
        raise DataError(
            f"no CIFAR-10 python batches here: expected {_CIFAR_TAR}, a {_CIFAR_DIR} folder, or "
            "data_batch_1..5, test_batch and batches.meta.",
            path=path,
            fix="download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html.",
        )
    members = _read_cifar_members(location, split)
    if split == "train":
        numbers = sorted(int(m.group(1)) for n in members if (m := _CIFAR_BATCH.match(n)))
        if not numbers:
            raise DataError("no data_batch_N files for the train split.", path=location)
        if numbers != list(range(1, len(numbers) + 1)):
            missing = sorted(set(range(1, numbers[-1] + 1)) - set(numbers))
            raise DataError(
                f"CIFAR-10 train batches have a gap: data_batch_{missing[0]} is missing "
                f"(found {numbers}).",
                path=location,
                fix="restore the missing batch.",
            )
        batch_names = [f"data_batch_{n}" for n in numbers]
    else:
        if "test_batch" not in members:
            raise DataError("no test_batch for the test split.", path=location)
        batch_names = ["test_batch"]
    images, labels = [], []
    for batch_name in batch_names:
        batch_images, batch_labels = _parse_cifar_batch(members[batch_name], location / batch_name)
        images.append(batch_images)
        labels.append(batch_labels)
    if classes is None:
        classes = CIFAR10_CLASSES
        if "batches.meta" in members:
            classes = _parse_cifar_meta(members["batches.meta"], location / "batches.meta")
    image_array = np.concatenate(images).reshape(-1, 3, 32, 32)
    stem = path.name.removesuffix(".tar.gz").removesuffix(".tgz").removesuffix(".tar")
    return _dataset(image_array, np.concatenate(labels), classes, name or f"{stem}/{split}", location)


def _cifar_location(path: Path) -> Path | None:
    """The folder of batches or the tar holding them, starting from ``path``; None if neither."""
    if path.is_file():
        return path if tarfile.is_tarfile(path) else None
    if not path.is_dir():
        return None
    if (
        (path / "batches.meta").is_file()
        or (path / "test_batch").is_file()
        or (path / "data_batch_1").is_file()
    ):
        return path
    if (path / _CIFAR_DIR).is_dir():
        return _cifar_location(path / _CIFAR_DIR)
    if (path / _CIFAR_TAR).is_file():
        return path / _CIFAR_TAR
    return None


def _read_cifar_members(location: Path, split: str) -> dict[str, bytes]:
    """The raw bytes of the batches ``split`` needs plus ``batches.meta``, by base name."""

    def wanted(base: str) -> bool:
        if base == "batches.meta":
            return True
        return base == "test_batch" if split == "test" else bool(_CIFAR_BATCH.match(base))

    if location.is_dir():
        return {p.name: p.read_bytes() for p in location.iterdir() if p.is_file() and wanted(p.name)}
    members: dict[str, bytes] = {}
    try:
        # Stream mode: one pass over the archive instead of re-decompressing it per member.
        with tarfile.open(location, mode="r|*") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and wanted(base):
                    handle = tar.extractfile(member)
                    members[base] = handle.read() if handle is not None else b""
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"cannot read the CIFAR-10 archive ({exc}).",
            path=location,
            fix="download cifar-10-python.tar.gz again.",
        ) from None
    return members


class _CifarUnpickler(pickle.Unpickler):
    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle_cifar(blob: bytes, where: Path) -> dict:
    """One CIFAR-10 python batch, a dict with bytes keys.

    The dataset ships as pickles written by Python 2, hence ``encoding="bytes"``. Even a dataset
    file can be hostile, so the unpickler only resolves NumPy's array-rebuilding globals: a pickle
    that names anything else (os.system, builtins.eval, ...) is refused before it runs.
    """
    try:
        obj = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle can raise almost anything
        raise DataError(
            f"not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}).",
            path=where,
            fix="download cifar-10-python.tar.gz again.",
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"a CIFAR-10 batch must be a dict, found {type(obj).__name__}.", path=where)
    return obj


def _parse_cifar_batch(blob: bytes, where: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_cifar(blob, where)
    data, labels = batch.get(b"data"), batch.get(b"labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"b'data' must be a uint8 array (n, 3072), got {got}.", path=where)
    if labels is None or len(labels) != len(data):
        count = "none" if labels is None else len(labels)
        raise DataError(
            f"b'labels' must hold one label per row of b'data' ({len(data)}), got {count}.", path=where
        )
    return data, np.asarray(labels)


def _parse_cifar_meta(blob: bytes, where: Path) -> list[str]:
    names = _unpickle_cifar(blob, where).get(b"label_names")
    if not isinstance(names, list) or not names:
        raise DataError("batches.meta has no b'label_names' list.", path=where)
    return [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in names]


# --------------------------------------------------------------------------- image folders


def load_image_folder(
    folder: str | Path,
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> ImageDataset:
    """One sub-folder per class (sorted names are the classes) of png/jpg/jpeg/bmp/gif/webp files.

    All images must share one size; they become grey ("L") if every one is grey, else RGB. Pass
    ``classes`` to fix the class list (e.g. the union over train and test folders); every
    sub-folder must then be one of them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError("image folder not found.", path=folder)
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        raise DataError(
            "no class sub-folders: expected one sub-folder of images per class.",
            path=folder,
            fix="arrange images as FOLDER/<class name>/<image>.png.",
        )
    classes = [d.name for d in class_dirs] if classes is None else list(classes)
    files: list[Path] = []
    labels: list[int] = []
    for class_dir in class_dirs:
        if class_dir.name not in classes:
            raise DataError(
                f"class folder {class_dir.name!r} is not one of the classes {classes}.", path=class_dir
            )
        for file in sorted(class_dir.iterdir()):
            if file.is_file() and file.suffix.lower() in IMAGE_EXTENSIONS:
                files.append(file)
                labels.append(classes.index(class_dir.name))
    if not files:
        raise DataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in any class sub-folder.", path=folder)

    # Headers first (cheap: PIL decodes lazily) so a mismatch is reported before decoding anything.
    sizes, modes = [], []
    for file in files:
        with _open_image(file) as image:
            sizes.append(image.size)
            modes.append(image.mode)
    for file, size in zip(files, sizes):
        if size != sizes[0]:
            raise DataError(
                f"image is {size[0]}x{size[1]} but {files[0]} is {sizes[0][0]}x{sizes[0][1]}; "
                "all images must share one size.",
                path=file,
                fix="resize the images to one size first.",
            )
    mode = "L" if all(m in _GREY_MODES for m in modes) else "RGB"
    arrays = []
    for file in files:
        with _open_image(file) as image:
            try:
                arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
            except OSError as exc:
                raise DataError(f"image cannot be decoded ({exc}).", path=file) from None
    pixels = np.stack(arrays)
    pixels = pixels[:, None] if mode == "L" else pixels.transpose(0, 3, 1, 2)
    return _dataset(pixels, np.asarray(labels), classes, name or folder.name, folder)


def _open_image(file: Path) -> Image.Image:
    try:
        return Image.open(file)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"not a readable image ({exc}).", path=file) from None


def _image_folder_classes(folders: Sequence[Path]) -> list[str]:
    names = {
        d.name
        for f in folders
        if f.is_dir()
        for d in f.iterdir()
        if d.is_dir() and not d.name.startswith(".")
    }
    return sorted(names)


# --------------------------------------------------------------------------- npz


def load_npz(
    path: str | Path,
    classes: Sequence[str] | None = None,
    name: str | None = None,
) -> ImageDataset:
    """An ``.npz`` with images under ``x`` or ``images`` and labels under ``y`` or ``labels``.

    Images may be (N, H, W), (N, H, W, C) or (N, C, H, W) with C in {1, 3}, as uint8 (or integers in
    [0, 255]) or floats in [0, 1]. Class names come from a ``classes`` array if the file has one,
    else from ``classes``, else "0".."max label". Object arrays are refused (they need pickle).
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = set(archive.files)
            x_key = next((k for k in ("x", "images") if k in keys), None)
            y_key = next((k for k in ("y", "labels") if k in keys), None)
            if x_key is None or y_key is None:
                missing = "images ('x' or 'images')" if x_key is None else "labels ('y' or 'labels')"
                raise DataError(
                    f"npz has no {missing}; keys found: {sorted(keys)}.",
                    path=path,
                    fix="save with np.savez(path, x=images, y=labels).",
                )
            images, labels = archive[x_key], archive[y_key]
            stored = archive["classes"] if "classes" in keys else None
    except DataError:
        raise
    except ValueError as exc:  # object arrays: loading them would need pickle
        raise DataError(
            f"npz holds an array that needs pickle to load ({exc}).",
            path=path,
            fix="save plain numeric arrays, and class names as a str array.",
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as exc:
        raise DataError(f"not a readable .npz file ({exc}).", path=path) from None
    images = _npz_images(images, path, x_key)
    labels = _npz_labels(labels, path, y_key)
    if len(images) != len(labels):
        raise DataError(
            f"{len(images)} images under {x_key!r} but {len(labels)} labels under {y_key!r}.", path=path
        )
    if stored is not None:
        classes = [c.decode("utf-8") if isinstance(c, bytes) else str(c) for c in stored.reshape(-1).tolist()]
    elif classes is None:
        classes = [str(i) for i in range(int(labels.max()) + 1 if len(labels) else 1)]
    stem = path.name.removesuffix(".npz")
    return _dataset(images, labels, classes, name or stem, path)


def _npz_images(images: np.ndarray, path: Path, key: str) -> np.ndarray:
    if images.ndim == 3:
        images = images[:, None]
    elif images.ndim == 4:
        last, first = images.shape[3] in (1, 3), images.shape[1] in (1, 3)
        if last and first:
            raise DataError(
                f"{key!r} has shape {images.shape}: ambiguous whether channels come first " "or last.",
                path=path,
                fix="save images as (N, C, H, W).",
            )
        if last:
            images = images.transpose(0, 3, 1, 2)
        elif not first:
            raise DataError(
                f"{key!r} has shape {images.shape}: no channel axis of size 1 or 3.",
                path=path,
                fix="save images as (N, H, W), (N, H, W, C) or (N, C, H, W).",
            )
    else:
        raise DataError(f"{key!r} must have 3 or 4 dimensions, got shape {images.shape}.", path=path)
    if images.dtype == np.uint8:
        return np.ascontiguousarray(images)
    if images.dtype.kind in "iu":
        if images.size and (images.min() < 0 or images.max() > 255):
            raise DataError(f"integer pixels under {key!r} must lie in [0, 255].", path=path)
        return np.ascontiguousarray(images, dtype=np.uint8)
    if images.dtype.kind == "f":
        if images.size and not (np.isfinite(images).all() and images.min() >= 0 and images.max() <= 1):
            raise DataError(
                f"float pixels under {key!r} must lie in [0, 1] (found "
                f"[{np.nanmin(images):g}, {np.nanmax(images):g}]).",
                path=path,
                fix="divide 0..255 pixels by 255, or store them as uint8.",
            )
        return np.ascontiguousarray(np.rint(images * 255.0), dtype=np.uint8)
    raise DataError(f"pixels under {key!r} have dtype {images.dtype}; expected uint8 or float.", path=path)


def _npz_labels(labels: np.ndarray, path: Path, key: str) -> np.ndarray:
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"labels under {key!r} must be 1-D class indices, got shape {labels.shape}.", path=path
        )
    if labels.dtype.kind == "f" and np.array_equal(labels, np.rint(labels)):
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise DataError(f"labels under {key!r} must be integers, got dtype {labels.dtype}.", path=path)
    if labels.size and labels.min() < 0:
        raise DataError(f"labels under {key!r} must be >= 0, found {labels.min()}.", path=path)
    return labels.astype(np.int64)


def _npz_label_count(path: Path) -> int:
    """1 + the largest label in an npz, reading only the labels array (npz members load lazily)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            key = next((k for k in ("y", "labels") if k in archive.files), None)
            labels = archive[key] if key is not None else np.zeros(0)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, zlib.error):
        return 0  # the split's own load reports the problem
    return int(labels.max()) + 1 if labels.size else 0


# --------------------------------------------------------------------------- named datasets


def cache_dir() -> Path:
    """modelprove's download cache: ``$XDG_CACHE_HOME/modelprove`` or ``~/.cache/modelprove``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "modelprove"


def dataset_candidates(name: str, data: str | Path | None = None) -> list[Path]:
    """The places a named dataset is looked for, in order.

    An explicit ``data`` path is the only place tried (the path itself, then ``data/<name>``): a
    mistyped ``--data`` must not silently fall back to another copy. Without it: the dataset's
    own environment variable (e.g. ``MODELPROVE_FASHION_MNIST``), then ``$MODELPROVE_DATA/<name>``,
    then the Debian package's folder if there is one, then the user cache.
    """
    spec = _named_spec(name)
    if data is not None:
        data = Path(data).expanduser()
        return [data, data / spec.name]
    places = []
    if own := os.environ.get(spec.env):
        places.append(Path(own).expanduser())
    if shared := os.environ.get("MODELPROVE_DATA"):
        places.append(Path(shared).expanduser() / spec.name)
    if spec.name in DEBIAN_DIRS:
        places.append(DEBIAN_DIRS[spec.name])
    places.append(cache_dir() / spec.name)
    return places


def fashion_mnist_candidates(data: str | Path | None = None) -> list[Path]:
    """Where Fashion-MNIST is looked for, in order: ``data`` alone if given; otherwise
    ``$MODELPROVE_FASHION_MNIST``, ``$MODELPROVE_DATA/fashion-mnist``, Debian's
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``), and
    ``~/.cache/modelprove/fashion-mnist`` (``$XDG_CACHE_HOME`` respected), where ``download=True``
    puts the files."""
    return dataset_candidates("fashion-mnist", data)


def load_dataset(
    name_or_path: str | Path,
    split: str = "train",
    data: str | Path | None = None,
    download: bool = False,
) -> ImageDataset:
    """Load one split ("train" or "test") of a named dataset or of a dataset at a path.

    Names: "fashion-mnist", "mnist", "cifar10" (names win over a same-named folder in the working
    directory; write ``./mnist`` for the folder). They are looked for in the places
    :func:`dataset_candidates` lists (for Fashion-MNIST: ``data`` if given; else
    ``$MODELPROVE_FASHION_MNIST``, ``$MODELPROVE_DATA/fashion-mnist``, Debian's
    ``/usr/share/datasets/fashion-mnist``, the user cache). With ``download=True`` a dataset found
    nowhere is fetched from its official mirror into ``data`` (if given) or the user cache.

    Paths: an IDX folder, a CIFAR-10 folder or tar.gz, an image folder (one sub-folder per class)
    or an ``.npz``. Image folders and npz hold a test split as a ``train``/``test`` sub-folder
    (``train.npz``/``test.npz`` in a folder) or an ``X_test.npz`` beside ``X.npz``; a path with
    only one split is the train split.

    The returned tensors are fresh copies (loads are cached in-process); treat them as read-only
    all the same, as subsets and derived datasets share them.
    """
    split = _check_split(split)
    key = _ALIASES.get(str(name_or_path).strip().lower())
    if key is not None:
        return _load_named(NAMED[key], split, data, download)
    path = Path(name_or_path).expanduser()
    if data is not None:
        raise DataError(
            f"data={str(data)!r} only applies to the named datasets ({', '.join(NAMED)}).",
            path=path,
            fix="pass the dataset's path alone.",
        )
    if not path.exists():
        raise DataError(f"neither a known dataset name ({', '.join(NAMED)}) nor an existing path.", path=path)
    return _load_path(path, split)


def _load_named(spec: _Named, split: str, data: str | Path | None, download: bool) -> ImageDataset:
    name = f"{spec.name}/{split}"
    tried = []
    for place in dataset_candidates(spec.name, data):
        found, why = _find_named(spec, place, split)
        if found is not None:
            return _cached_dataset(spec.kind, found, split, spec.classes, name)
        tried.append(f"{place} ({why})")
    if download:
        target = Path(data).expanduser() if data is not None else cache_dir() / spec.name
        _download(spec, target)
        found, why = _find_named(spec, target, split)
        if found is None:
            raise DataError(f"{spec.title} was downloaded but cannot be found ({why}).", path=target)
        return _cached_dataset(spec.kind, found, split, spec.classes, name)
    fixes = []
    if spec.apt_package:
        fixes.append(f"install it with `apt-get install -y {spec.apt_package}`")
    what = "the four IDX files (train-images-idx3-ubyte.gz, ...)" if spec.kind == "idx" else _CIFAR_TAR
    fixes += [
        f"pass `--data DIR` with {what}",
        f"set {spec.env}=DIR",
        f"add `--download` to fetch it from {spec.base_url} into {cache_dir() / spec.name}",
    ]
    raise DataError(
        f"{spec.title} ({split} split) not found. Looked in: {'; '.join(tried)}.",
        fix=", or ".join(fixes) + ".",
    )


def _find_named(spec: _Named, place: Path, split: str) -> tuple[Path | None, str]:
    """The folder or file to load ``spec`` from at ``place``, else None and why not."""
    if not place.exists():
        return None, "does not exist"
    if spec.kind == "idx":
        if place.is_dir() and idx_files(place, split) is not None:
            return place, ""
        return (
            None,
            f"no {_IDX_PREFIX[split]}-images-idx3-ubyte[.gz] + {_IDX_PREFIX[split]}-labels-idx1-ubyte[.gz]",
        )
    location = _cifar_location(place)
    return (location, "") if location is not None else (None, f"no {_CIFAR_TAR} or CIFAR-10 batches")


def _download(spec: _Named, target: Path) -> None:
    """Fetch ``spec``'s files into ``target``, check their published MD5, write them atomically."""
    for file_name, md5 in track(spec.files.items(), f"download {spec.title}", enabled=progress_default()):
        dest = target / file_name
        if dest.is_file() and _md5(dest.read_bytes()) == md5:
            continue
        url = spec.base_url + file_name
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                blob = response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise DataError(
                f"download of {url} failed ({exc}).",
                path=dest,
                fix="check the network, or fetch the file yourself and pass --data DIR.",
            ) from None
        if _md5(blob) != md5:
            raise DataError(
                f"download of {url} has MD5 {_md5(blob)}, expected {md5}.",
                path=dest,
                fix="try again later; the mirror may have served a partial file.",
            )
        atomic_write_bytes(dest, blob)


def _md5(blob: bytes) -> str:
    return hashlib.md5(blob, usedforsecurity=False).hexdigest()  # published checksums, not security


# --------------------------------------------------------------------------- paths


def _load_path(path: Path, split: str) -> ImageDataset:
    """Detect the format at ``path`` and load ``split`` from it."""
    stem = path.name.removesuffix(".npz").removesuffix(".tar.gz").removesuffix(".tgz")
    name = f"{stem}/{split}"
    if path.is_file():
        lower = path.name.lower()
        if lower.endswith(".npz"):
            file = _npz_for_split(path, split)
            classes = _npz_shared_classes(path)
            return _cached_dataset("npz", file, split, classes, f"{_npz_base(path)[0]}/{split}")
        if _cifar_location(path) is not None:
            return _cached_dataset("cifar10", path, split, None, name)
        raise _unknown_format(path)
    if idx_files(path, "train") is not None or idx_files(path, "test") is not None:
        return _cached_dataset("idx", path, split, None, name)
    if _cifar_location(path) is not None:
        return _cached_dataset("cifar10", path, split, None, name)
    npz_files = [path / f"{s}.npz" for s in SPLITS if (path / f"{s}.npz").is_file()]
    if npz_files:
        file = path / f"{split}.npz"
        if not file.is_file():
            raise DataError(f"no {split}.npz for the {split} split (found {npz_files[0].name}).", path=path)
        return _cached_dataset("npz", file, split, _npz_label_classes(npz_files), name)
    split_dirs = [path / s for s in SPLITS if (path / s).is_dir()]
    if split_dirs:
        if not (path / split).is_dir():
            raise DataError(
                f"image folder has no {split}/ sub-folder for the {split} split.",
                path=path,
                fix=f"put {split} images in {path / split}/<class>/.",
            )
        return load_image_folder(path / split, _image_folder_classes(split_dirs), name)
    if any(d.is_dir() for d in path.iterdir()):
        if split == "test":
            raise DataError(
                "this image folder holds a single split, read as the train split; there is no test split.",
                path=path,
                fix=f"arrange it as {path}/train/<class>/ and {path}/test/<class>/.",
            )
        return load_image_folder(path, None, name)
    raise _unknown_format(path)


def _unknown_format(path: Path) -> DataError:
    return DataError(
        "unknown dataset format: expected a folder of IDX files (train-images-idx3-ubyte.gz ...), "
        "CIFAR-10 python batches or cifar-10-python.tar.gz, a folder with one sub-folder of images "
        "per class, or an .npz with x/y (images/labels).",
        path=path,
    )


def _npz_base(path: Path) -> tuple[str, str | None, str]:
    """``X_train.npz`` -> ("X", "train", "_"); ``X.npz`` -> ("X", None, "")."""
    stem = path.name[: -len(".npz")]
    for split in SPLITS:
        for sep in ("_", "-", "."):
            if stem.endswith(f"{sep}{split}") and len(stem) > len(split) + 1:
                return stem[: -len(split) - 1], split, sep
    return stem, None, ""


def _npz_for_split(path: Path, split: str) -> Path:
    base, own, sep = _npz_base(path)
    if own == split or (own is None and split == "train"):
        return path
    siblings = [path.with_name(f"{base}{s}{split}.npz") for s in ([sep] if sep else ["_", "-", "."])]
    if split == "train":
        siblings.append(path.with_name(f"{base}.npz"))  # X.npz beside X_test.npz is the train split
    for sibling in siblings:
        if sibling.is_file():
            return sibling
    held = f"the {own} split" if own else "a single split, read as the train split"
    raise DataError(
        f"this npz holds {held}; there is no {siblings[0].name} beside it for the {split} split.",
        path=path,
        fix=f"save the {split} split as {siblings[0]}.",
    )


def _npz_shared_classes(path: Path) -> tuple[str, ...] | None:
    """Default class names over every split file of an npz dataset, so train and test agree."""
    base = _npz_base(path)[0]
    files = [path, path.with_name(f"{base}.npz")]
    files += [path.with_name(f"{base}{s}{split}.npz") for split in SPLITS for s in "_-."]
    return _npz_label_classes([f for f in dict.fromkeys(files) if f.is_file()])


def _npz_label_classes(files: Sequence[Path]) -> tuple[str, ...] | None:
    count = max((_npz_label_count(f) for f in files), default=0)
    return tuple(str(i) for i in range(count)) if count else None


# --------------------------------------------------------------------------- cache and helpers


_LOADERS: dict[str, Callable[..., ImageDataset]] = {
    "idx": lambda path, split, classes: load_idx_folder(path, split, classes),
    "cifar10": lambda path, split, classes: load_cifar10(path, split, classes),
    "npz": lambda path, split, classes: load_npz(path, classes),
}


@functools.lru_cache(maxsize=8)
def _load_cached(
    kind: str, path: str, split: str, classes: tuple[str, ...] | None, stamp: tuple
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    dataset = _LOADERS[kind](Path(path), split, list(classes) if classes is not None else None)
    return dataset.images, dataset.labels, tuple(dataset.classes)


def _cached_dataset(
    kind: str, path: Path, split: str, classes: Sequence[str] | None, name: str
) -> ImageDataset:
    """Load through the in-process cache (keyed on path, split and file stamps); return copies."""
    resolved = path.resolve()
    images, labels, names = _load_cached(
        kind, str(resolved), split, tuple(classes) if classes is not None else None, _stamp(resolved)
    )
    return ImageDataset(images.clone(), labels.clone(), list(names), name)


def _stamp(path: Path, depth: int = 2) -> tuple:
    """Sizes and modification times under ``path``, so a changed file is not served from cache."""
    stat = path.stat()
    if not path.is_dir() or depth == 0:
        return (path.name, stat.st_mtime_ns, stat.st_size)
    return (path.name, stat.st_mtime_ns, tuple(_stamp(child, depth - 1) for child in sorted(path.iterdir())))


def _dataset(
    images: np.ndarray, labels: np.ndarray, classes: Sequence[str], name: str, where: Path
) -> ImageDataset:
    """An ImageDataset whose validation errors also name the file they came from."""
    try:
        return ImageDataset(
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8)),
            torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            list(classes),
            name,
        )
    except DataError as exc:
        raise DataError(str(exc), path=where) from None


def _read_bytes(path: Path, what: str) -> bytes:
    """A file's content, gunzipped if it starts with the gzip magic number."""
    if not path.is_file():
        raise DataError(f"{what} not found.", path=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{what} cannot be read ({exc}).", path=path) from None
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(
            f"{what} is a damaged or truncated gzip ({exc}).", path=path, fix="download the file again."
        ) from None


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}.")
    return split


def _named_spec(name: str) -> _Named:
    key = _ALIASES.get(name.strip().lower())
    if key is None:
        raise DataError(f"unknown dataset name {name!r}; expected one of {', '.join(NAMED)}.")
    return NAMED[key]
