"""Small pieces several attacks share: config checks, attacker-data checks, chunked victim queries,
the classifier head, and a transfer set labelled by the victim."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from modelprove.access import BlackBoxAccess, LabelOnlyAccess
from modelprove.core.errors import ModelproveError
from modelprove.data.augment import AUGMENTATIONS
from modelprove.data.dataset import ImageDataset

QUERY_CHUNK = 4096  # images converted to float and sent at once: bounds memory for 60,000 RGB images


def check(config: Any, field: str, ok: bool, expected: str, example: str | None = None) -> None:
    """Raise a ModelproveError naming ``field`` of ``config`` when ``ok`` is False."""
    if not ok:
        name = type(config).__name__
        raise ModelproveError(
            f"{name}.{field} must be {expected}; got {getattr(config, field)!r}.",
            fix=f"set {field}={example if example is not None else '...'} (e.g. --attack NAME:{field}=...).",
        )


def check_training(config: Any) -> None:
    """The fields every training attack has: epochs, lr, batch_size, augmentation (if present)."""
    check(config, "epochs", isinstance(config.epochs, int) and config.epochs >= 1, "an integer >= 1", "5")
    check(config, "lr", config.lr > 0, "a positive learning rate", "0.01")
    check(config, "batch_size", config.batch_size >= 1, "an integer >= 1", "128")
    if hasattr(config, "augmentation"):
        check(config, "augmentation", config.augmentation in AUGMENTATIONS,
              f"one of {', '.join(sorted(AUGMENTATIONS))}", "none")


def require_data(attacker_data: ImageDataset | None, victim: LabelOnlyAccess, attack: str) -> ImageDataset:
    """The attacker's data, checked to be present and shaped like the victim's inputs."""
    if attacker_data is None or len(attacker_data) == 0:
        raise ModelproveError(f"attack {attack!r} needs attacker data, but none was given.",
                              fix="pass the attacker split (modelprove steal --data ...).")
    if victim.input_shape is not None and attacker_data.input_shape != victim.input_shape:
        raise ModelproveError(
            f"attack {attack!r}: attacker data {attacker_data.name!r} has images {attacker_data.input_shape} "
            f"but the victim takes {victim.input_shape}.",
            fix="use data of the victim's task and input size.",
        )
    return attacker_data


def query_labels(victim: LabelOnlyAccess, data: ImageDataset) -> torch.Tensor:
    """The victim's top-1 labels on every image of ``data`` (each image counted once)."""
    return torch.cat([victim.labels(data.as_float(rows)) for rows in _chunks(len(data))])


def query_probabilities(victim: BlackBoxAccess, data: ImageDataset) -> torch.Tensor:
    """The victim's probability vectors on every image of ``data`` (each image counted once)."""
    return torch.cat([victim.probabilities(data.as_float(rows)) for rows in _chunks(len(data))])


def victim_classes(victim: LabelOnlyAccess, attacker_data: ImageDataset | None) -> list[str]:
    """Class names for a set labelled by the victim: the attacker data's if they fit, else 0..K-1."""
    if attacker_data is not None and attacker_data.num_classes == victim.num_classes:
        return list(attacker_data.classes)
    return [str(k) for k in range(victim.num_classes)]


def labelled_by_victim(victim: LabelOnlyAccess, images: ImageDataset, attacker_data: ImageDataset | None) -> ImageDataset:
    """``images`` with the victim's top-1 labels in place of their own."""
    return ImageDataset(images.images, query_labels(victim, images), victim_classes(victim, attacker_data),
                        f"{images.name} labelled by the victim", images.indices)


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` in ``model.net`` (every registered architecture
    ends in one that maps to the classes; ResNet's ``fc`` is registered last too)."""
    net = getattr(model, "net", model)
    head = None
    for module in net.modules():
        if isinstance(module, nn.Linear):
            head = module
    num_classes = getattr(model, "num_classes", None)
    if head is None or (num_classes is not None and head.out_features != num_classes):
        raise ModelproveError(
            f"cannot find the last layer of {type(net).__name__}: expected a final nn.Linear with "
            f"{num_classes} outputs, found {head}.",
            fix="register architectures whose classifier head is an nn.Linear registered last.",
        )
    return head


@contextmanager
def frozen_except(model: nn.Module, trainable: nn.Module) -> Iterator[None]:
    """Train only ``trainable``: every other parameter is frozen, and every BatchNorm outside it
    runs on its running statistics (a frozen layer's statistics must not drift either)."""
    keep = {id(p) for p in trainable.parameters()}
    saved = [(p, p.requires_grad) for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
    inside = {id(m) for m in trainable.modules()}
    hooks = [m.register_forward_pre_hook(_eval_mode) for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in inside]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()
        for p, flag in saved:
            p.requires_grad_(flag)


def reinitialise(layer: nn.Module, seed: int) -> None:
    """Fresh default initialisation of ``layer``, seeded, without touching the global RNG stream."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        layer.reset_parameters()  # type: ignore[operator]


def _eval_mode(module: nn.Module, inputs: Any) -> None:
    module.training = False


def _chunks(n: int) -> list[torch.Tensor]:
    return list(torch.arange(n).split(QUERY_CHUNK))
