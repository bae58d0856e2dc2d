"""Fine-tuning (fully-accessible): continue training the victim on the attacker's own labelled data.

All layers are trained (CAE's FTAL); MOVE's "fine-tuning" attack trains 5 epochs on substitute data.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier
from modelprove.training import TrainConfig, train


@dataclass
class FinetuneConfig:
    epochs: int = 5
    lr: float = 0.01
    batch_size: int = 128
    augmentation: str = "crop"
    seed: int = 0


def steal(victim: Classifier, attacker_data: ImageDataset, config: FinetuneConfig | None = None):
    config = config or FinetuneConfig()
    suspect = copy.deepcopy(victim)
    record = train(
        suspect,
        attacker_data,
        TrainConfig(epochs=config.epochs, lr=config.lr, batch_size=config.batch_size,
                    augmentation=config.augmentation, seed=config.seed),
        description="fine-tune (attacker data)",
    )
    lineage = {"attack": "finetune", "params": asdict(config), "data": attacker_data.name,
               "samples": len(attacker_data), "queries": 0, "training": record.to_dict()}
    return suspect.eval(), lineage
