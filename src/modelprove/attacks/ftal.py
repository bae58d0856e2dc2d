"""Fine-Tune All Layers (FTAL) (fully-accessible, CAE Sec. 5, after Uchida et al. 2017): all layers of the victim are trained further.

"The last layer" is the classifier head (CAE's "penultimate layer", i.e. the last weight layer):
the last nn.Linear of the architecture. Trained on the attacker's own labelled split by default.
"""

from __future__ import annotations

from dataclasses import dataclass

from modelprove.access import WhiteBoxAccess
from modelprove.attacks.finetune import FinetuneConfig, tune
from modelprove.data.dataset import ImageDataset

PAPER_SETTING = "CAE Sec. 5: CIFAR-10 source model, epochs not stated; here 5 epochs, lr 0.01, attacker split"


@dataclass
class FtalConfig(FinetuneConfig):
    """Same fields as finetune's: epochs, lr, batch_size, augmentation, data, limit, seed."""


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: FtalConfig):
    return tune(victim, attacker_data, config, attack="ftal", train_all=True, reinit_last=False)
