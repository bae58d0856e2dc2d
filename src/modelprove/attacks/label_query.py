"""Label-query (query-only, MOVE Sec. 2.1 and 6.1): a fresh surrogate trained on the attacker's
images labelled by the victim's top-1 answers.

Each attacker image is queried once (N queries); the labels are stored and reused every epoch.
MOVE trains 20 epochs; the default here is 10, because 20 epochs on 30,000 Fashion-MNIST images
take about 3 minutes of cnn_small on 2 idle CPU cores (epochs=20 restores the paper's setting).
Augmentation "crop": a top-1 label survives a 2-pixel shift.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import LabelOnlyAccess
from modelprove.attacks.base import student_for
from modelprove.attacks._shared import query_labels, require_data, victim_classes
from modelprove.attacks.transfer_set import SurrogateConfig, fit, relabelled
from modelprove.data.dataset import ImageDataset

PAPER_SETTING = "MOVE Sec. 6.1: fresh model, 20 epochs on substitute data labelled by the victim's top-1 (here 10)"


@dataclass
class LabelQueryConfig(SurrogateConfig):
    epochs: int = 10
    augmentation: str = "crop"


def steal(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, config: LabelQueryConfig):
    data = require_data(attacker_data, victim, "label_query")
    labels = query_labels(victim, data)
    transfer = relabelled(data, labels, victim_classes(victim, data), f"{data.name}+victim-labels")
    student = student_for(victim, data, config.arch, config.seed)
    record = fit(student, transfer, config, description="label-query")
    return student, {"queries": len(data), "transfer_set": len(transfer), "training": record.to_dict()}
