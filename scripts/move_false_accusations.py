"""Does white-box MOVE accuse independent models? Measures it for several protection settings.

For each setting (``--variant NAME:key=value,...``; MoveConfig fields) it protects a victim, then
verifies a direct copy, a fine-tuned copy and ``--independent`` models trained from scratch on the
attacker's data with other seeds. For every suspect it reports the meta-classifier's mean victim
probability over the whole verification pool (mu_S, against the benign model's mu_B) and the
p-value of the paper's test (m images) for several draws of the m images.
Writes a Markdown table to ``--report`` (default docs/results/move-false-accusations.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from modelprove.attacks import run_attack
from modelprove.core.config import config_from_pairs
from modelprove.core.fileio import atomic_write_bytes
from modelprove.core.verdict import format_p
from modelprove.data import load_splits
from modelprove.methods import move
from modelprove.models import build_model, card_for, load_model
from modelprove.training import TrainConfig, evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--defender-limit", type=int, default=None)
    parser.add_argument("--attacker-limit", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--independent", type=int, default=3, help="independent models (seeds 1000..)")
    parser.add_argument("--draws", type=int, default=5, help="draws of the m verification images")
    parser.add_argument("--m", type=int, default=10)
    parser.add_argument("--variant", action="append", default=[], help="NAME:key=value,... (MoveConfig)")
    parser.add_argument("--work", type=Path, default=Path("runs/false-accusations"))
    parser.add_argument("--report", type=Path, default=Path("docs/results/move-false-accusations.md"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    variants = args.variant or ["paper-default:"]

    splits = load_splits(args.data, attacker_fraction=0.5, seed=0,
                         defender_limit=args.defender_limit, attacker_limit=args.attacker_limit)
    rows: list[str] = []
    independents: dict[tuple[str, int], torch.nn.Module] = {}
    for variant in variants:
        name, _, pairs = variant.partition(":")
        config = config_from_pairs(move.MoveConfig, [p for p in pairs.split(",") if p], epochs=args.epochs, m=args.m)
        out = args.work / name
        started = time.perf_counter()
        try:
            opened = move.open_protection(out)
        except Exception:
            move.protect(splits.defender, splits.test, out, config, force=out.exists())
            opened = move.open_protection(out)
        protect_seconds = time.perf_counter() - started
        victim, card = load_model(out / "victim.safetensors")
        suspects = {
            "direct-copy": run_attack("copy", victim, None)[0],
            "fine-tuned": run_attack("finetune", victim, splits.attacker)[0],
        }
        for k in range(args.independent):
            seed = 1000 + k
            key = (config.arch, seed)
            if key not in independents:
                torch.manual_seed(seed)
                channels, height, width = splits.attacker.input_shape
                model = build_model(config.arch, channels, splits.attacker.num_classes, (height, width),
                                    mean=card.mean, std=card.std)
                train(model, splits.attacker, TrainConfig(epochs=args.epochs, seed=seed),
                      description=f"independent {k}")
                independents[key] = model
            suspects[f"independent-{k}"] = independents[key]
        pool = len(opened.pool_images)
        results = opened.protection.manifest["results"]
        for suspect_name, model in suspects.items():
            full = move.verify(opened, model, suspect_name=suspect_name, m=pool)
            draws = [move.verify(opened, model, m=args.m, seed=s).p_value
                     for s in range(args.draws)]
            flagged = sum(p < 0.01 for p in draws)
            rows.append(
                f"| {name} | {suspect_name} | {evaluate(model, splits.test):.3f} | "
                f"{full.details['mu_suspect']:.3f} | {full.details['mu_benign']:.3f} | "
                f"{format_p(float(np.median(draws)))} | {flagged}/{args.draws} |"
            )
        rows.append(
            f"| {name} | (victim / benign test acc {results['victim_test_accuracy']:.3f} / "
            f"{results['benign_test_accuracy']:.3f}; C train acc {results['meta_classifier']['train_accuracy']:.3f}; "
            f"protect {protect_seconds:.0f} s) | | | | | |"
        )
        print("\n".join(rows[-len(suspects) - 1 :]), flush=True)

    header = [
        "# White-box MOVE and independent models",
        "",
        f"Generated by `python scripts/move_false_accusations.py {' '.join(f'--variant {v}' for v in variants)} "
        f"--defender-limit {args.defender_limit} --attacker-limit {args.attacker_limit} --epochs {args.epochs} "
        f"--independent {args.independent} --draws {args.draws} --m {args.m}` (do not edit by hand).",
        "",
        f"mu_S / mu_B: the meta-classifier's mean victim probability over the whole verification pool for the "
        f"suspect / the benign model. p (median): the paper's one-sided paired t-test with m = {args.m}, median over "
        f"{args.draws} draws of the m images; flagged: draws with p < 0.01.",
        "",
        "| setting | suspect | test acc | mu_S | mu_B | p (median) | flagged |",
        "|---|---|---|---|---|---|---|",
    ]
    atomic_write_bytes(args.report, ("\n".join(header + rows) + "\n").encode())
    print(f"report written to {args.report}")


if __name__ == "__main__":
    main()
