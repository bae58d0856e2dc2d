"""Logit-query (query-only, MOVE Sec. 2.1 and 6.1): a fresh surrogate trained to match the victim's
probability vectors by minimising KL(victim(x) || surrogate(x)) on the attacker's images.

Each image is queried once; its probability vector is stored and looked up by dataset index in the
loss. Augmentation "none" by default: a stored vector belongs to the un-shifted image, and a crop
would make the surrogate match it on an image the victim never answered. MOVE trains 20 epochs;
10 here, to keep a 30,000-image Fashion-MNIST run within about 2 minutes on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import BLACK_BOX, BlackBoxAccess, require_access
from modelprove.attacks.base import student_for
from modelprove.attacks._shared import query_probabilities, require_data, victim_classes
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.data.dataset import ImageDataset
from modelprove.training.students import soft_target_loss

PAPER_SETTING = "MOVE Sec. 6.1: fresh model, KL to the victim's outputs, 20 epochs on substitute data (here 10)"


@dataclass
class LogitQueryConfig(SurrogateConfig):
    epochs: int = 10
    augmentation: str = "none"


def steal(victim: BlackBoxAccess, attacker_data: ImageDataset | None, config: LogitQueryConfig):
    require_access(victim, BLACK_BOX, "the logit_query attack")
    data = require_data(attacker_data, victim, "logit_query")
    targets = query_probabilities(victim, data)
    transfer = relabelled(data, targets.argmax(dim=1), victim_classes(victim, data),
                          f"{data.name}+victim-probabilities")
    student = student_for(victim, data, config.arch, config.seed)
    record = fit(student, transfer, config, loss_fn=soft_target_loss(targets), description="logit-query")
    return student, {"queries": len(data), "transfer_set": len(transfer), "training": record.to_dict()}
