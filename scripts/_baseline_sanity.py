"""Shared body of scripts/entangled_sanity.py and scripts/dataset_inference_sanity.py.

One honest sanity measurement of a registered ownership method on Fashion-MNIST at reduced scale:
the victim's test accuracy next to a plain model's (same arch, seed and data, no protection), and
the verdicts (white-box and black-box) on the victim itself, a direct copy, a fine-tuned copy
(attacks "copy" and "finetune") and an independent model trained on the attacker half with another
seed. Models are cached under --work, so a rerun resumes; the table and every verdict are written to
--work/sanity.json too. Run from the repository root with PYTHONPATH=src.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from modelprove.access import BlackBoxAccess, WhiteBoxAccess
from modelprove.attacks import run_attack
from modelprove.core.config import config_from_pairs
from modelprove.core.verdict import format_p
from modelprove.data import load_splits
from modelprove.methods import get_method
from modelprove.models import build_model, card_for, load_model, save_model
from modelprove.training import evaluate, train


def main(method: str, doc: str) -> int:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path(f"runs/sanity-{method}"))
    parser.add_argument("--defender", type=int, default=10000)
    parser.add_argument("--attacker", type=int, default=10000)
    parser.add_argument("--test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verify-seeds", type=int, default=3, help="verifications per suspect and setting (seeds 0..n-1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--set", dest="pairs", action="append", default=[], help="method config key=value")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    spec = get_method(method)
    config = config_from_pairs(spec.config, args.pairs, epochs=args.epochs, seed=args.seed)
    splits = load_splits("fashion-mnist", attacker_fraction=0.5, seed=0, defender_limit=args.defender,
                         attacker_limit=args.attacker, test_limit=args.test)
    args.work.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    protection_dir = args.work / "protection"
    start = time.perf_counter()
    if not protection_dir.exists():
        made = spec.protect(splits.defender, splits.test, protection_dir, config)
        protect_results = made.results
    else:
        protect_results = json.loads((protection_dir / "manifest.json").read_text())["results"]
    timings["protect"] = time.perf_counter() - start
    opened = spec.open(protection_dir)
    victim = opened.victim

    def cached(name: str, make) -> torch.nn.Module:
        path = args.work / f"{name}.safetensors"
        if path.exists():
            return load_model(path)[0]
        begin = time.perf_counter()
        model, lineage = make()
        timings[f"make_{name}"] = time.perf_counter() - begin
        save_model(model, card_for(model, splits.defender.classes, None, lineage), path)
        return model

    def plain_model(data, seed: int):
        def make():
            channels, height, width = data.input_shape
            # normalised like the methods' victims (statistics of the training data), so the plain
            # model differs from the victim only by the method's training change
            sample = data.as_float(torch.arange(min(len(data), 10000)))
            mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
            torch.manual_seed(seed)
            model = build_model(config.arch, channels, data.num_classes, (height, width), mean=mean, std=std)
            train(model, data, config.train_config(seed), description=f"plain model on {data.name}, seed {seed}")
            return model, {"kind": "plain", "data": data.name, "seed": seed}
        return make

    plain = cached("plain", plain_model(splits.defender, args.seed))
    suspects = {
        "victim": victim,
        "direct copy": cached("copy", lambda: run_attack("copy", victim, splits.attacker, test=splits.test,
                                                          seed=args.seed)),
        "fine-tuned copy": cached("finetune", lambda: run_attack("finetune", victim, splits.attacker,
                                                                 test=splits.test, seed=args.seed)),
        "independent (attacker half, seed +1000)": cached("independent", plain_model(splits.attacker, args.seed + 1000)),
    }
    rows = []
    start = time.perf_counter()
    for name, model in suspects.items():
        row = {"suspect": name, "test_accuracy": evaluate(model, splits.test)}
        for setting in spec.access:
            verdicts = []
            for seed in range(args.verify_seeds):
                access = WhiteBoxAccess(model, name=name) if setting == "white-box" else BlackBoxAccess.from_model(model, name=name)
                verdicts.append(spec.verify(opened, access, setting=setting, seed=seed, suspect_name=name).to_dict())
            row[setting] = verdicts
        rows.append(row)
    timings["verify"] = time.perf_counter() - start

    print(f"\n{method} sanity: Fashion-MNIST defender {len(splits.defender)}, attacker {len(splits.attacker)}, "
          f"test {len(splits.test)}, {config.epochs} epochs, arch {config.arch}, seed {args.seed}, "
          f"{torch.get_num_threads()} thread(s)")
    print(f"plain model test accuracy {evaluate(plain, splits.test):.4f}; victim {protect_results['victim_test_accuracy']:.4f}")
    print("protection results:", json.dumps({k: v for k, v in protect_results.items() if k != "seconds"}))
    print("protection seconds:", json.dumps(protect_results.get("seconds", {})))
    header = "| suspect | test acc |" + "".join(
        f" {s}: stolen (of {args.verify_seeds}) | {s}: p (median) | {s}: delta_mu (mean) |" for s in spec.access)
    print(header)
    print("|" + "---|" * (2 + 3 * len(spec.access)))
    for row in rows:
        cells = [row["suspect"], f"{row['test_accuracy']:.4f}"]
        for setting in spec.access:
            verdicts = row[setting]
            ps = sorted(v["p_value"] for v in verdicts)
            cells += [f"{sum(v['stolen'] for v in verdicts)}/{len(verdicts)}", format_p(ps[len(ps) // 2]),
                      f"{sum(v['effect'] for v in verdicts) / len(verdicts):+.3f}"]
        print("| " + " | ".join(cells) + " |")
    queries = {s: rows[0][s][0]["queries"] for s in spec.access}
    timings["total"] = time.perf_counter() - started
    print("queries per verification (victim, seed 0):", queries)
    print("seconds:", json.dumps({k: round(v, 1) for k, v in timings.items()}))
    (args.work / "sanity.json").write_text(json.dumps(
        {"method": method, "config": vars(config) if hasattr(config, "__dict__") else str(config),
         "args": {k: str(v) for k, v in vars(args).items()}, "protection_results": protect_results,
         "plain_test_accuracy": evaluate(plain, splits.test), "rows": rows, "seconds": timings}, indent=1, default=str))
    return 0
