"""Jagielski et al. (2020) extraction as CAE uses it (query-only, CAE Sec. 5 and App. A.5.1, Eq. 11-12).

The victim's probability vectors are softened with a distillation temperature T,
y_soft = softmax(log victim(x) / T) (log-probabilities are the victim's logits up to a per-image
constant, which softmax ignores), and a fresh surrogate is trained with cross-entropy on y_soft.
Each image is queried once. T's value did not survive the paper's text extraction: the default 2.0
lies in the usual distillation range (Hinton et al. use 2-5); T = 1 reduces this to logit_query.
Augmentation "none", as in logit_query, because a stored vector belongs to the un-shifted image.
CAE trains its surrogates for CIFAR-10 to convergence; 10 epochs here (about 2 minutes on 30,000
Fashion-MNIST images on 2 CPU cores).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import BLACK_BOX, BlackBoxAccess, require_access
from modelprove.attacks.base import student_for
from modelprove.attacks._shared import check, query_probabilities, require_data, victim_classes
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.data.dataset import ImageDataset
from modelprove.training.students import soft_target_loss, soften

PAPER_SETTING = ("CAE App. A.5.1: soft labels softmax(victim logits / T) from the victim, surrogate trained on "
                 "them (T not recoverable; here 2)")

@dataclass
class JagielskiConfig(SurrogateConfig):
    temperature: float = 2.0
    epochs: int = 10
    augmentation: str = "none"

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self, "temperature", self.temperature > 0, "> 0 (1 keeps the victim's outputs as they are)", "2.0")


def steal(victim: BlackBoxAccess, attacker_data: ImageDataset | None, config: JagielskiConfig):
    require_access(victim, BLACK_BOX, "the jagielski attack")
    data = require_data(attacker_data, victim, "jagielski")
    probabilities = query_probabilities(victim, data)
    targets = soften(probabilities, config.temperature)
    transfer = relabelled(data, probabilities.argmax(dim=1), victim_classes(victim, data),
                          f"{data.name}+victim-soft-labels")
    student = student_for(victim, data, config.arch, config.seed)
    record = fit(student, transfer, config, loss_fn=soft_target_loss(targets), description="jagielski")
    return student, {"queries": len(data), "transfer_set": len(transfer), "training": record.to_dict()}
