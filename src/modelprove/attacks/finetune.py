"""Fine-tuning (fully-accessible): continue training the victim on the attacker's own labelled data.

All layers are trained (CAE's FTAL); MOVE's "fine-tuning" attack trains 5 epochs on substitute data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from modelprove.access import WhiteBoxAccess
from modelprove.data.dataset import ImageDataset
from modelprove.training import TrainConfig, train


@dataclass
class FinetuneConfig:
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    augmentation: str = "crop"
    seed: int = 0


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset, config: FinetuneConfig):
    suspect = copy.deepcopy(victim.model)
    record = train(
        suspect,
        attacker_data,
        TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    augmentation=config.augmentation, seed=config.seed),
        description="fine-tune (attacker data)",
    )
    return suspect.eval(), {"training": record.to_dict()}
