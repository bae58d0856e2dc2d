"""Direct copy (fully-accessible, MOVE Sec. 2.1): the adversary takes the victim's weights as they are."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from modelprove.access import WhiteBoxAccess
from modelprove.data.dataset import ImageDataset

PAPER_SETTING = "MOVE Sec. 2.1 / 6.1: the victim's weights as they are; same here"


@dataclass
class CopyConfig:
    seed: int = 0


def steal(victim: WhiteBoxAccess, attacker_data: ImageDataset | None, config: CopyConfig):
    del attacker_data, config  # a copy needs no data and makes no random choice
    return copy.deepcopy(victim.model).eval(), {"uses_data": False}
