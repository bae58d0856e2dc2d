"""Extraction with adversarial training of the surrogate (adapted attack, label-only oracle;
CAE Sec. 5 "Adapted model extraction attacks" and Fig. 4c: adversarial training from scratch is the
removal attack that defeats CAE fingerprints, because it limits the transfer of adversarial examples).

The attacker's images are labelled by the victim's top-1 (each queried once), and a fresh surrogate
is trained on every batch mixed with PGD examples of it (Madry et al. 2018; L-inf ``eps``,
``steps`` steps of size ``step``, random start) that carry the victim labels of their clean images:
loss = (1 - w) · CE(clean) + w · CE(PGD), w = ``adversarial_weight`` (1 gives Madry's pure
adversarial training). PGD examples are made from the un-augmented image, so augmentation
defaults to "none" and the two halves of the loss see the same picture. PGD examples are never
sent to the victim: queries = attacker images.

CAE trains CIFAR-10 surrogates to convergence with multi-step PGD (parameters not recoverable from
the text). Here eps = 0.1 (a usual Fashion-MNIST radius; Madry used 0.3 on MNIST), 5 steps of
eps/4, and 3 epochs, because each epoch costs about 7 forward-backward passes per image (about
3 minutes for 30,000 Fashion-MNIST images on 2 CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from modelprove.access import LabelOnlyAccess
from modelprove.attacks._shared import check, query_labels, require_data, victim_classes
from modelprove.attacks.base import student_for
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.core.seeding import generator
from modelprove.data.dataset import ImageDataset
from modelprove.training.adversarial import pgd

PAPER_SETTING = ("CAE Sec. 5: multi-step PGD adversarial training from scratch on victim labels (here eps 0.1, 5 "
                 "steps, 3 epochs)")


@dataclass
class AdversarialConfig(SurrogateConfig):
    eps: float = 0.1
    step: float = 0.025
    steps: int = 5
    adversarial_weight: float = 0.5
    epochs: int = 3
    augmentation: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "eps", 0 < self.eps <= 1, "an L-inf radius in (0, 1] (images are in [0, 1])", "0.1")
        check(self, "step", 0 < self.step <= self.eps, f"in (0, eps={self.eps}]", "0.025")
        check(self, "steps", self.steps >= 1, "an integer >= 1", "5")
        check(self, "adversarial_weight", 0 < self.adversarial_weight <= 1,
              "in (0, 1] (the share of the loss on PGD examples)", "0.5")


def steal(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: AdversarialConfig):
    data = require_data(attacker_data, victim, "adversarial")
    labels = query_labels(victim, data)
    transfer = relabelled(data, labels, victim_classes(victim, data), f"{data.name}+victim-labels")
    student = student_for(victim, data, config.arch, config.seed)
    start_points = generator(config.seed + 1)  # PGD's random starts: their own stream, seeded
    w = config.adversarial_weight

    def loss_fn(logits: torch.Tensor, index: torch.Tensor, batch_labels: torch.Tensor) -> torch.Tensor:
        clean = transfer.images[index].float().div(255)
        adversarial = pgd(student, clean, batch_labels, config.eps, config.step, config.steps, start_points)
        adversarial_loss = F.cross_entropy(student(adversarial), batch_labels)
        return (1 - w) * F.cross_entropy(logits, batch_labels) + w * adversarial_loss

    record = fit(student, transfer, config, loss_fn=loss_fn, description="adversarial training")
    return student, {"queries": len(data), "transfer_set": len(transfer), "training": record.to_dict()}
