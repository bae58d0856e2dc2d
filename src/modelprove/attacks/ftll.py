"""Fine-Tune Last Layer (FTLL) (fully-accessible, CAE Sec. 5, after Uchida et al. 2017): only the last layer is trained; all others (and their BatchNorm statistics) stay frozen.

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
class FtllConfig(FinetuneConfig):
    """Same fields as finetune's: epochs, lr, batch_size, augmentation, data, limit, seed."""


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: FtllConfig):
    return tune(victim, attacker_data, config, attack="ftll", train_all=False, reinit_last=False)
