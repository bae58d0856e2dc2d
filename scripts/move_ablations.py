"""MOVE's ablations and settings (TPAMI Sec. 7.1-7.2, 7.4.1), measured on the demo's three suspects.

Two groups:
- Verification-time switches, on the `make demo` protection and suspects (runs/demo; run `make demo`
  first): with vs without the meta-classifier, transformed images from training vs held-out test
  images, and the number m of sampled images.
- Protection-time switches, each a new protection on a smaller defender set (``--defender-limit``,
  default 10,000 images, so the whole grid fits in minutes on 2 cores) with its own direct copy and
  fine-tuned copy, plus independent models shared by all: style transfer vs a BadNets-style patch,
  gradient sign vs raw gradient, the transformation rate gamma, and other style images.

Every protection and suspect is cached under ``--work`` (a rerun reuses them). Writes
``--report`` (default docs/results/move-ablations.md).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from modelprove.access import BLACK_BOX, WHITE_BOX, WhiteBoxAccess, restrict
from modelprove.attacks import run_attack
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.core.fileio import atomic_write_bytes
from modelprove.core.progress import console
from modelprove.core.verdict import Verdict, format_p
from modelprove.data import load_splits
from modelprove.methods import move
from modelprove.models import build_model, card_for, load_model, save_model
from modelprove.training import TrainConfig, train

SUSPECTS = ("direct-copy", "fine-tuned", "independent")

# name -> (MoveConfig pairs, what the paper says about it)
PROTECTION_VARIANTS: dict[str, tuple[list[str], str]] = {
    "baseline (style: scream, gamma 0.1)": ([], ""),
    "patch instead of style": (["transformer=patch"],
                               "Sec. 7.2.1 / Table IX: the style watermark transfers better than a white-square patch."),
    "per-weight signs (spatial_max)": (["reduction=spatial_max"],
                                       "The paper's feature layout, with sign (Sec. 5.3)."),
    "per-weight raw gradient (spatial_max)": (["reduction=spatial_max", "feature=gradient"],
                                              "Sec. 7.2.2 / Table X: sign beats the raw gradient."),
    "gamma 0.05": (["transformation_rate=0.05"], "Sec. 7.1: larger gamma, stronger verification; 0.1 suffices."),
    "gamma 0.2": (["transformation_rate=0.2"], ""),
    "style: grass": (["style_image=grass"], "Sec. 7.1: other style images work about as well."),
    "style: gravel": (["style_image=gravel"], ""),
    "style: brick": (["style_image=brick"], ""),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--demo", type=Path, default=Path("runs/demo"), help="a `make demo` run directory")
    parser.add_argument("--defender-limit", type=int, default=10000)
    parser.add_argument("--attacker-limit", type=int, default=10000)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--independent", type=int, default=2, help="independent models shared by all variants")
    parser.add_argument("--only", action="append", default=[], help="run only protection variants containing this")
    parser.add_argument("--skip-protection-variants", action="store_true")
    parser.add_argument("--work", type=Path, default=Path("runs/ablations"))
    parser.add_argument("--report", type=Path, default=Path("docs/results/move-ablations.md"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1 when another job shares the CPU)")
    return parser.parse_args()


def cell(v: Verdict) -> str:
    derived = not v.suspect.startswith("independent")
    mark = "" if v.stolen == derived else " ✗"
    return f"{v.effect:+.3f} / {format_p(v.p_value)}{mark}"


def verification_time(args, lines: list[str]) -> None:
    protection = args.demo / "protection"
    try:
        opened = move.open_protection(protection)
    except ModelproveError as error:
        lines += ["", f"*Verification-time switches not measured: {error} Run `make demo` first.*"]
        return
    suspects = {name: load_model(args.demo / "suspects" / f"{name}.safetensors")[0] for name in SUSPECTS}

    def verdict(name: str, level: str, **options) -> Verdict:
        access = restrict(WhiteBoxAccess(suspects[name], name=name), level)
        return move.verify(opened, access, seed=args.seed, **options)

    header = "| switch | setting | " + " | ".join(SUSPECTS) + " |"
    rule = "|---|---|" + "---|" * len(SUSPECTS)
    lines += ["", "## Verification-time switches (the `make demo` protection and suspects)", "",
              "Each cell: delta_mu / p-value (✗ marks a wrong decision at alpha 0.01).", "", header, rule]
    for label, level, options in [
        ("meta-classifier (default)", BLACK_BOX, {}),
        ("no meta-classifier: true-label confidence", BLACK_BOX, {"meta_classifier": False}),
        ("training images (default)", WHITE_BOX, {}),
        ("held-out test images", WHITE_BOX, {"verification_images": "test"}),
        ("training images (default)", BLACK_BOX, {}),
        ("held-out test images", BLACK_BOX, {"verification_images": "test"}),
        *[(f"m = {m}", WHITE_BOX, {"m": m}) for m in (5, 10, 20, 50)],
        *[(f"m = {m}", BLACK_BOX, {"m_black_box": m}) for m in (25, 50, 100, 200)],
    ]:
        verdicts = [verdict(name, level, **options) for name in SUSPECTS]
        setting = verdicts[0].setting
        lines.append(f"| {label} | {setting} | " + " | ".join(cell(v) for v in verdicts) + " |")
        console.print(lines[-1])


def protection_time(args, lines: list[str]) -> None:
    splits = load_splits(args.data, attacker_fraction=0.5, seed=args.seed,
                         defender_limit=args.defender_limit, attacker_limit=args.attacker_limit)
    args.work.mkdir(parents=True, exist_ok=True)
    independents = []
    for k in range(args.independent):
        path = args.work / f"independent-{k}.safetensors"
        if not path.exists():
            seed = 1000 + k
            torch.manual_seed(seed)
            channels, height, width = splits.attacker.input_shape
            model = build_model("cnn_small", channels, splits.attacker.num_classes, (height, width))
            train(model, splits.attacker, TrainConfig(epochs=args.epochs, seed=seed), description=f"independent {k}")
            save_model(model, card_for(model, splits.attacker.classes), path, overwrite=True)
        independents.append(load_model(path)[0])
    names = ["direct-copy", "fine-tuned", *[f"independent-{k}" for k in range(args.independent)]]
    lines += ["", f"## Protection-time switches (defender {len(splits.defender)} images, attacker "
              f"{len(splits.attacker)}, {args.epochs} epochs, seed {args.seed})", "",
              "Each cell: delta_mu / p-value, white-box (m = 10) then black-box (m = 100); ✗ marks a wrong "
              "decision at alpha 0.01.", "",
              "| variant | victim / benign test acc | " + " | ".join(names) + " | paper |",
              "|---|---|" + "---|" * len(names) + "---|"]
    for variant, (pairs, claim) in PROTECTION_VARIANTS.items():
        if args.only and not any(text in variant for text in args.only):
            continue
        slug = "".join(c if c.isalnum() else "-" for c in variant).strip("-")
        out = args.work / slug
        config = config_from_pairs(move.MoveConfig, pairs, seed=args.seed, epochs=args.epochs)
        started = time.perf_counter()
        try:
            opened = move.open_protection(out)
        except ModelproveError:
            move.protect(splits.defender, splits.test, out, config, force=out.exists())
            opened = move.open_protection(out)
        victim, _ = load_model(out / "victim.safetensors")
        finetuned_path = out / "fine-tuned.safetensors"
        if not finetuned_path.exists():
            model, lineage = run_attack("finetune", victim, splits.attacker, seed=args.seed)
            save_model(model, card_for(model, splits.attacker.classes, lineage=lineage), finetuned_path, overwrite=True)
        models = [victim, load_model(finetuned_path)[0], *independents]
        cells = []
        for name, model in zip(names, models):
            white = move.verify(opened, WhiteBoxAccess(model, name=name), seed=args.seed)
            black = move.verify(opened, WhiteBoxAccess(model, name=name).as_black_box(), seed=args.seed)
            cells.append(f"{cell(white)}<br>{cell(black)}")
        results = opened.protection.manifest["results"]
        lines.append(f"| {variant} | {results['victim_test_accuracy']:.3f} / {results['benign_test_accuracy']:.3f} | "
                     + " | ".join(cells) + f" | {claim} |")
        console.print(f"{lines[-1]}  ({time.perf_counter() - started:.0f} s)")


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    command = " ".join(["python", "scripts/move_ablations.py", *sys.argv[1:]])
    lines = ["# MOVE ablations, measured", "",
             f"Generated by `{command}`; do not edit by hand. Fashion-MNIST, cnn_small victims.", ""]
    verification_time(args, lines)
    if not args.skip_protection_variants:
        protection_time(args, lines)
    atomic_write_bytes(args.report, ("\n".join(lines) + "\n").encode())
    console.print(f"report written to {args.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
