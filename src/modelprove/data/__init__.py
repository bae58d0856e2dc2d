"""Datasets: sources (named datasets and user files), defender/attacker/test splits, augmentations,
and substitute (other-domain) data for attacks."""

from modelprove.data.augment import (
    AUGMENTATIONS,
    crop_padding,
    cutmix,
    hflip,
    random_crop,
    random_hflip,
    translate,
)
from modelprove.data.dataset import ImageDataset, seeded_share
from modelprove.data.sources import (
    CIFAR10_CLASSES,
    FASHION_MNIST_CLASSES,
    MNIST_CLASSES,
    cache_dir,
    dataset_candidates,
    fashion_mnist_candidates,
    load_cifar10,
    load_dataset,
    load_idx_folder,
    load_image_folder,
    load_npz,
    read_idx,
)
from modelprove.data.splits import DataSplits, load_splits, make_splits
from modelprove.data.substitute import SUBSTITUTES, load_substitute

__all__ = [
    "AUGMENTATIONS",
    "CIFAR10_CLASSES",
    "FASHION_MNIST_CLASSES",
    "MNIST_CLASSES",
    "SUBSTITUTES",
    "DataSplits",
    "ImageDataset",
    "cache_dir",
    "crop_padding",
    "cutmix",
    "dataset_candidates",
    "fashion_mnist_candidates",
    "hflip",
    "load_cifar10",
    "load_dataset",
    "load_idx_folder",
    "load_image_folder",
    "load_npz",
    "load_splits",
    "load_substitute",
    "make_splits",
    "random_crop",
    "random_hflip",
    "read_idx",
    "seeded_share",
    "translate",
]
