"""Stealing and removal attacks: victim (through the access it is entitled to) + attacker data -> suspect.

Each attack is one module with a small typed config and one entry point
``steal(victim_access, attacker_data, config) -> (suspect, details)``, plus one line in ATTACKS.
Run attacks and chains through :func:`modelprove.attacks.base.run_attack`.
"""

from __future__ import annotations

from modelprove.attacks import (
    adversarial, direct_copy, distill, finetune, ftal, ftll, ground_truth, jagielski, knockoff, label_query,
    logit_query, papernot, prune, rtal, rtll, transfer, zero_shot,
)
from modelprove.attacks.base import AttackSpec, parse_attack, run_attack
from modelprove.core.errors import ModelproveError

ATTACKS: dict[str, AttackSpec] = {
    "copy": AttackSpec("copy", "fully-accessible", "white-box", direct_copy.CopyConfig, direct_copy.steal,
                       "direct copy of the victim's weights"),
    "finetune": AttackSpec("finetune", "fully-accessible", "white-box", finetune.FinetuneConfig, finetune.steal,
                           "MOVE's fine-tuning: all layers, on attacker data or (data=NAME) victim-labelled substitute data"),
    "ftll": AttackSpec("ftll", "fully-accessible", "white-box", ftll.FtllConfig, ftll.steal,
                       "CAE's FTLL: fine-tune the last layer only, the rest frozen"),
    "ftal": AttackSpec("ftal", "fully-accessible", "white-box", ftal.FtalConfig, ftal.steal,
                       "CAE's FTAL: fine-tune all layers"),
    "rtll": AttackSpec("rtll", "fully-accessible", "white-box", rtll.RtllConfig, rtll.steal,
                       "CAE's RTLL: re-initialise the last layer and train only it"),
    "rtal": AttackSpec("rtal", "fully-accessible", "white-box", rtal.RtalConfig, rtal.steal,
                       "CAE's RTAL: re-initialise the last layer, then train all layers"),
    "prune": AttackSpec("prune", "fully-accessible", "white-box", prune.PruneConfig, prune.steal,
                        "iterative magnitude pruning of conv/linear weights, fine-tuned between steps"),
    "distill": AttackSpec("distill", "dataset-accessible", "black-box", distill.DistillConfig, distill.steal,
                          "Hinton distillation of the victim's softened outputs on the attacker's data"),
    "zero_shot": AttackSpec("zero_shot", "model-accessible", "white-box", zero_shot.ZeroShotConfig, zero_shot.steal,
                            "data-free adversarial distillation (DFAD): a generator against the student, no data"),
    "transfer": AttackSpec("transfer", "adapted", "label-only", transfer.TransferConfig, transfer.steal,
                           "pretrain on another domain, new head, fine-tune on victim-labelled attacker data"),
    "label_query": AttackSpec("label_query", "query-only", "label-only", label_query.LabelQueryConfig,
                              label_query.steal, "fresh surrogate on attacker images labelled by the victim's top-1"),
    "logit_query": AttackSpec("logit_query", "query-only", "black-box", logit_query.LogitQueryConfig,
                              logit_query.steal, "fresh surrogate matching the victim's probability vectors (KL)"),
    "jagielski": AttackSpec("jagielski", "query-only", "black-box", jagielski.JagielskiConfig, jagielski.steal,
                            "fresh surrogate trained on the victim's outputs softened at temperature T"),
    "papernot": AttackSpec("papernot", "query-only", "label-only", papernot.PapernotConfig, papernot.steal,
                           "substitute grown from a small seed set by Jacobian-based dataset augmentation"),
    "knockoff": AttackSpec("knockoff", "query-only", "black-box", knockoff.KnockoffConfig, knockoff.steal,
                           "Knockoff nets: random other-domain transfer set, matching the victim's probabilities"),
    "knockoff_labels": AttackSpec("knockoff_labels", "query-only", "label-only", knockoff.KnockoffLabelsConfig,
                                  knockoff.steal_labels, "Knockoff nets on the victim's top-1 labels only"),
    "adversarial": AttackSpec("adversarial", "adapted", "label-only", adversarial.AdversarialConfig, adversarial.steal,
                              "label-query extraction with PGD adversarial training of the surrogate"),
    "ground_truth": AttackSpec("ground_truth", "adapted", "label-only", ground_truth.GroundTruthConfig,
                               ground_truth.steal, "label-query extraction where a fraction p keeps its true labels"),
}


def get_attack(name: str) -> AttackSpec:
    if name not in ATTACKS:
        raise ModelproveError(f"unknown attack {name!r}; known: {', '.join(sorted(ATTACKS))}.",
                              fix="run `modelprove steal --list`.")
    return ATTACKS[name]


__all__ = ["ATTACKS", "AttackSpec", "get_attack", "parse_attack", "run_attack"]
