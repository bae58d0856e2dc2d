"""Sanity measurement of a trigger watermark (BadNets, or gradient matching via --method) on Fashion-MNIST.

Reduced scale (defender 10k, attacker 10k, test 2k, 5 epochs, cnn_small, one thread by default): protects
a victim, trains a plain model on the same defender data without the watermark (same seed), and verifies
the victim itself, a direct copy, a fine-tuned copy (attacks.run_attack("finetune"), on the attacker
half), the plain model, and an independent model trained on the attacker half with another seed, each
white-box (m = 10) and black-box (m = 100) with verification seed 0, plus how many of 20 verification
seeds flag it. Prints a table and writes it as JSON under --work (models are cached there, so a rerun
only verifies). The benchmark, not this script, makes the docs page.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from modelprove.access import WhiteBoxAccess
from modelprove.attacks import run_attack
from modelprove.core.config import config_from_pairs
from modelprove.core.fileio import atomic_write_json
from modelprove.core.verdict import format_p
from modelprove.data import load_splits
from modelprove.methods import METHODS
from modelprove.methods.badnets import new_model
from modelprove.models import card_for, load_model, save_model
from modelprove.training import evaluate, train

SEEDS = 20  # verification seeds for the "flagged in k of SEEDS" column


def cached(path: Path, make) -> torch.nn.Module:
    """Load a model saved under ``path``, or make, save and return it."""
    if path.exists():
        return load_model(path)[0]
    model = make()
    save_model(model, card_for(model), path)
    return model


def main(default_method: str = "badnets") -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", default=default_method, choices=("badnets", "gradient-matching"))
    parser.add_argument("--work", type=Path, default=None, help="cache directory (default runs/<method>-sanity)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="pairs", action="append", default=[], metavar="KEY=VALUE",
                        help="extra method config fields, e.g. --set craft_steps=20")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    work = args.work or Path(f"runs/{args.method}-sanity")
    work.mkdir(parents=True, exist_ok=True)
    spec = METHODS[args.method]
    splits = load_splits("fashion-mnist", attacker_fraction=0.5, seed=0, defender_limit=10000,
                         attacker_limit=10000, test_limit=2000)
    defender, attacker, test = splits.defender, splits.attacker, splits.test
    config = config_from_pairs(spec.config, args.pairs, epochs=args.epochs, seed=args.seed)
    timings: dict[str, float] = {}

    protection_dir = work / "protection"
    start = time.perf_counter()
    if not protection_dir.exists():
        spec.protect(defender, test, protection_dir, config)
    opened = spec.open(protection_dir)
    timings["protect"] = time.perf_counter() - start
    results = opened.protection.manifest["results"]

    start = time.perf_counter()
    plain = cached(work / "plain.safetensors", lambda: _trained(config, defender, args.seed, "plain (clean D)"))
    independent = cached(work / "independent.safetensors",
                         lambda: _trained(config, attacker, args.seed + 1000, "independent (attacker half)"))
    copy = cached(work / "copy.safetensors", lambda: run_attack("copy", opened.victim, attacker, seed=args.seed)[0])
    finetuned = cached(work / "finetuned.safetensors",
                       lambda: run_attack("finetune", opened.victim, attacker, test=test, seed=args.seed)[0])
    timings["suspects"] = time.perf_counter() - start

    suspects = {"victim": opened.victim, "direct copy": copy, "fine-tuned copy": finetuned,
                "plain model (same data, no watermark)": plain, "independent (attacker half, seed +1000)": independent}
    rows = []
    start = time.perf_counter()
    for name, model in suspects.items():
        accuracy = evaluate(model, test)
        for setting in ("white-box", "black-box"):
            def access():
                white = WhiteBoxAccess(model, name=name)
                return white if setting == "white-box" else white.as_black_box()
            verdict = spec.verify(opened, access(), setting=setting, seed=0)
            flagged = sum(spec.verify(opened, access(), setting=setting, seed=s).stolen for s in range(SEEDS))
            rows.append({"suspect": name, "test_accuracy": round(accuracy, 4), "setting": setting,
                         "p_value": verdict.p_value, "delta_mu": verdict.effect,
                         "mu_triggered": verdict.details["mu_suspect"], "mu_benign": verdict.details["mu_reference"],
                         "stolen": verdict.stolen, "flagged_seeds": f"{flagged}/{SEEDS}", "m": verdict.samples})
    timings["verify"] = time.perf_counter() - start

    print(f"{args.method} sanity: Fashion-MNIST defender {len(defender)}, attacker {len(attacker)}, test {len(test)}; "
          f"{config.arch}, {args.epochs} epochs, seed {args.seed}, {args.threads} thread(s)")
    print("victim results: " + json.dumps({k: v for k, v in results.items()}, default=str))
    print(f"plain model test accuracy {evaluate(plain, test):.4f} vs victim {results['victim_test_accuracy']:.4f}")
    header = f"{'suspect':42} {'acc':>6} {'setting':9} {'p':>8} {'delta_mu':>9} {'mu_T':>7} {'mu_B':>7} {'stolen':6} flagged"
    print(header)
    for r in rows:
        print(f"{r['suspect']:42} {r['test_accuracy']:6.3f} {r['setting']:9} {format_p(r['p_value']):>8} "
              f"{r['delta_mu']:9.4f} {r['mu_triggered']:7.4f} {r['mu_benign']:7.4f} {str(r['stolen']):6} {r['flagged_seeds']}")
    total = time.perf_counter() - started
    print("wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in timings.items()) + f", total {total:.1f} "
          "(protect/suspects are ~0 when reused from the cache)")
    atomic_write_json(work / "sanity.json", {"method": args.method, "config": asdict(config),
                                             "results": results, "rows": rows, "seconds": timings})
    return 0


def _trained(config, data, seed: int, description: str):
    model = new_model(config.arch, data, seed)
    train(model, data, config.train_config(seed), description=description)
    return model


if __name__ == "__main__":
    raise SystemExit(main())
