"""Direct copy (fully-accessible, MOVE Sec. 2.1): the adversary takes the victim's weights as they are."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass

from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier


@dataclass
class CopyConfig:
    seed: int = 0


def steal(victim: Classifier, attacker_data: ImageDataset | None, config: CopyConfig | None = None):
    config = config or CopyConfig()
    del attacker_data  # a copy needs no data
    return copy.deepcopy(victim).eval(), {"attack": "copy", "params": asdict(config), "queries": 0}
