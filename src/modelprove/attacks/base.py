"""What every attack shares: its registry entry, the victim access it is entitled to, and the harness
that runs an attack (or a chain ``a>b:k=v>c``) and records the suspect's lineage.

An attack module defines a config dataclass and ``steal(victim, attacker_data, config) -> (model,
details)``. ``victim`` is an access object at the attack's ``oracle`` level (access layer), so a
label-only attack can never see probabilities; the harness, not the attack, reads the query count.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch

from modelprove.access import BLACK_BOX, LABEL_ONLY, WHITE_BOX, LabelOnlyAccess, WhiteBoxAccess, restrict
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.data.dataset import ImageDataset
from modelprove.models import Classifier, build_model
from modelprove.training import agreement, evaluate

FAMILIES = ("fully-accessible", "dataset-accessible", "model-accessible", "query-only", "adapted")


@dataclass(frozen=True)
class AttackSpec:
    name: str
    family: str  # what the adversary holds (MOVE Sec. 2.1 / CAE Sec. 5): one of FAMILIES
    oracle: str  # the victim access steal() receives: white-box, black-box or label-only
    config: type
    steal: Callable[..., tuple[Classifier, dict]]
    description: str


@dataclass(frozen=True)
class Stage:
    name: str
    pairs: tuple[str, ...]

    def __str__(self) -> str:
        return self.name + (":" + ",".join(self.pairs) if self.pairs else "")


def parse_attack(text: str) -> list[Stage]:
    """``copy>logit_query:arch=vgg_small,epochs=5>zero_shot`` -> three stages, each with its key=value pairs."""
    stages = []
    for part in text.split(">"):
        name, _, params = part.strip().partition(":")
        if not name:
            raise ModelproveError(f"empty attack stage in {text!r}; write NAME[:k=v,...][>NAME...].")
        pairs = tuple(p.strip() for p in params.split(",") if p.strip())
        stages.append(Stage(name.strip(), pairs))
    return stages


def victim_access(victim: Classifier, level: str, *, budget: int | None = None, name: str = "victim") -> LabelOnlyAccess:
    """The victim as an attack at ``level`` is entitled to see it."""
    return restrict(WhiteBoxAccess(victim, name=name, budget=budget), level)


def student_for(victim: LabelOnlyAccess, attacker_data: ImageDataset | None, arch: str | None, seed: int) -> Classifier:
    """A freshly initialised model for the stolen copy: ``arch`` (default: the victim's, if known,
    else cnn_small), the victim's input shape and classes, normalised with the attacker data's statistics
    (a query-only adversary does not know the victim's)."""
    if victim.input_shape is None:
        raise ModelproveError(f"{victim.name} does not declare its input shape; cannot build a student for it.")
    channels, height, width = victim.input_shape
    if arch is None:
        arch = victim.model.arch if isinstance(victim, WhiteBoxAccess) else "cnn_small"
    mean = std = None
    if attacker_data is not None and len(attacker_data):
        sample = attacker_data.as_float(torch.arange(min(len(attacker_data), 5000)))
        mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    torch.manual_seed(student_seed(seed))
    return build_model(arch, channels, victim.num_classes, (height, width), mean=mean, std=std)


def student_seed(seed: int) -> int:
    """The initialisation seed of an attack's fresh model: a hash of the attack's seed, so a student never
    starts from the victim's initial weights even when the attack and the victim were given one seed
    (victims and benign models are initialised with ``torch.manual_seed(seed)`` itself)."""
    return int(hashlib.sha256(f"student/{seed}".encode()).hexdigest()[:8], 16)


def run_attack(
    attack: str,
    victim: Classifier,
    attacker_data: ImageDataset | None,
    *,
    test: ImageDataset | None = None,
    budget: int | None = None,
    seed: int | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Run ``attack`` (one stage or a ``>`` chain) on ``victim``; return the suspect and its lineage.

    Each stage's output is the next stage's victim. ``budget`` bounds each stage's queries.
    The lineage records every stage's parameters, data and queries, and — given ``test`` — the
    suspect's test accuracy and fidelity (top-1 agreement) to the original victim.
    """
    from modelprove.attacks import get_attack  # the registry imports this module

    stages = parse_attack(attack)
    specs = [get_attack(stage.name) for stage in stages]
    configs = [config_from_pairs(spec.config, list(stage.pairs), seed=seed) for spec, stage in zip(specs, stages)]
    current = victim
    records = []
    for stage, spec, config in zip(stages, specs, configs):
        access = victim_access(current, spec.oracle, budget=budget)
        start = time.perf_counter()
        stolen, details = spec.steal(access, attacker_data, config)
        seconds = time.perf_counter() - start
        reported = details.pop("queries", access.queries)
        if reported != access.queries:
            raise ModelproveError(
                f"attack {spec.name!r} reported {reported} queries but its oracle counted {access.queries}."
            )
        records.append({
            "attack": spec.name, "family": spec.family, "oracle": spec.oracle, "params": asdict(config),
            "data": attacker_data.name if attacker_data is not None and details.get("uses_data", True) else None,
            "queries": access.queries, "seconds": round(seconds, 2), **details,
        })
        current = stolen.eval()
    lineage: dict[str, Any] = {
        "attack": attack,
        "stages": records,
        "queries": sum(r["queries"] for r in records),
        "seconds": round(sum(r["seconds"] for r in records), 2),
        "victim_arch": victim.arch,
    }
    if test is not None:
        lineage["test_accuracy"] = round(evaluate(current, test), 4)
        lineage["fidelity"] = round(agreement(current, victim, test), 4)
    return current, lineage


__all__ = [
    "BLACK_BOX", "FAMILIES", "LABEL_ONLY", "WHITE_BOX", "AttackSpec", "Stage", "parse_attack", "run_attack",
    "student_for", "student_seed", "victim_access",
]
