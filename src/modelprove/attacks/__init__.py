"""Stealing and removal attacks: victim (through the access it is entitled to) + attacker data -> suspect.

Each attack is one module with a small typed config and one entry point
``steal(victim, attacker_data, config) -> (suspect, lineage)``, plus one line in ATTACKS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from modelprove.attacks import direct_copy, finetune
from modelprove.core.errors import ModelproveError


@dataclass(frozen=True)
class AttackSpec:
    name: str
    access: str  # what the attacker holds: fully-accessible, dataset-accessible, model-accessible, query-only
    config: type
    steal: Callable[..., Any]
    description: str


ATTACKS: dict[str, AttackSpec] = {
    "copy": AttackSpec("copy", "fully-accessible", direct_copy.CopyConfig, direct_copy.steal, "direct copy of the victim's weights"),
    "finetune": AttackSpec("finetune", "fully-accessible", finetune.FinetuneConfig, finetune.steal,
                           "fine-tune the victim on attacker data (all layers, FTAL)"),
}


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise ModelproveError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}.")
    return ATTACKS[name]
