"""Ground-truth attack (adapted, label-only oracle; CAE Sec. 5 and Fig. 4d): a label-query
extraction in which the attacker already holds true labels for a fraction ``p`` of its images.

Those images keep their own labels and are never sent to the victim; the rest are labelled by the
victim's top-1 (each queried once). A fresh surrogate trains on the mix, so the more ground truth,
the less of the victim's own decision boundary (and of any fingerprint in it) it inherits.
Queries = images actually sent = N - round(p · N). CAE evaluates p up to 0.8 on CIFAR-10 and finds
its fingerprint survives; the default here is p = 0.5, 10 epochs (as label_query), crop augmentation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from modelprove.access import LabelOnlyAccess
from modelprove.attacks._shared import check, query_labels, require_data
from modelprove.attacks.base import student_for
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.core.errors import ModelproveError
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset

PAPER_SETTING = ("CAE Sec. 5 / Fig. 4d: surrogate trained with a fraction p of true labels (p up to 0.8), the "
                 "rest victim labels")


@dataclass
class GroundTruthConfig(SurrogateConfig):
    p: float = 0.5  # share of the attacker's images that keep their true labels (not queried)
    epochs: int = 10
    augmentation: str = "crop"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "p", 0 <= self.p < 1,
              "in [0, 1) (p = 1 would query nothing: an independent model, not an attack)", "0.5")


def steal(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: GroundTruthConfig):
    data = require_data(attacker_data, victim, "ground_truth")
    if data.num_classes != victim.num_classes:
        raise ModelproveError(
            f"the ground_truth attack keeps the attacker's own labels, but {data.name!r} has "
            f"{data.num_classes} classes and the victim {victim.num_classes}.",
            fix="use attacker data of the victim's task (the attacker split).",
        )
    keep = round(config.p * len(data))
    order = torch.randperm(len(data), generator=generator(config.seed))
    own, asked = order[:keep], order[keep:]
    labels = data.labels.clone()  # a dataset's tensors are shared: never write into them
    if len(asked):
        labels[asked] = query_labels(victim, data.subset(asked))
    transfer = relabelled(data, labels, list(data.classes), f"{data.name}+{config.p:g}-ground-truth")
    student = student_for(victim, data, config.arch, config.seed)
    record = fit(student, transfer, config, description="ground-truth attack")
    return student, {"queries": len(asked), "ground_truth_labels": len(own), "transfer_set": len(transfer),
                     "training": record.to_dict()}
