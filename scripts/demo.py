"""`make demo`: protect a Fashion-MNIST classifier with MOVE, steal it, verify three suspects.

Suspects: a direct copy, the copy fine-tuned on the attacker's data, and an independent model
trained from scratch on the attacker's part of the training set without the style. Each is verified
white-box (its weights) and black-box (probability vectors only), the black-box verdict both from
the model file and from an ONNX export of it, side by side. Writes the
protection, the suspects, each verdict as JSON, a Markdown summary and an HTML report of every verdict
(``report.html``) to ``runs/demo/``; a second run reuses what is already there (``--fresh`` redoes
everything).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from modelprove.access import WhiteBoxAccess, open_suspect
from modelprove.attacks import run_attack
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console
from modelprove.core.verdict import format_p, verdict_table
from modelprove.data import load_splits
from modelprove.methods import move
from modelprove.models import build_model, card_for, export_onnx, load_model, save_model
from modelprove.report import with_paths, write_report
from modelprove.training import TrainConfig, agreement, evaluate, train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--defender-limit", type=int, default=None, help="cap the defender's images")
    parser.add_argument("--attacker-limit", type=int, default=None, help="cap the attacker's images")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--m", type=int, default=10, help="white-box m (the paper's 10)")
    parser.add_argument("--m-black-box", type=int, default=100, help="black-box m (the paper's 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing runs/demo")
    parser.add_argument("--set", dest="pairs", action="append", default=[], help="MOVE parameter key=value")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(2)
    out: Path = args.out
    if args.fresh and out.exists():
        console.print(f"--fresh: removing the previous demo run in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    splits = load_splits(args.data, data=args.data_dir, attacker_fraction=0.5, seed=args.seed,
                         defender_limit=args.defender_limit, attacker_limit=args.attacker_limit)
    timings["load data"] = time.perf_counter() - start
    console.print(f"data: defender {len(splits.defender)}, attacker {len(splits.attacker)}, test {len(splits.test)} "
                  f"({args.data}; disjoint defender/attacker split, seed {args.seed})")

    config = config_from_pairs(move.MoveConfig, args.pairs, seed=args.seed, epochs=args.epochs, m=args.m)
    protection_dir = out / "protection"
    start = time.perf_counter()
    try:
        opened = move.open_protection(protection_dir)
        console.print(f"reusing the protection in {protection_dir} (pass --fresh to redo it)")
        reused = " (reused)"
    except ModelproveError:
        if protection_dir.exists():
            shutil.rmtree(protection_dir)  # an incomplete demo protection of our own: redo it
        move.protect(splits.defender, splits.test, protection_dir, config)
        opened = move.open_protection(protection_dir)
        reused = ""
        if (out / "suspects").exists():  # stolen from an earlier victim: never reuse them with this one
            shutil.rmtree(out / "suspects")
    timings[f"protect, in all{reused}"] = time.perf_counter() - start
    victim, victim_card = load_model(protection_dir / "victim.safetensors")
    results = opened.protection.manifest["results"]
    for stage, seconds in results["seconds"].items():
        timings[f"protect: {stage.replace('_', ' ')}{reused and ' (when made)'}"] = seconds

    suspects: dict[str, Path] = {}

    def make_suspect(name: str, build) -> None:
        path = out / "suspects" / f"{name}.safetensors"
        suspects[name] = path
        if path.exists() and path.with_suffix(".json").exists():
            console.print(f"reusing suspect {path}")
            return
        begin = time.perf_counter()
        model, lineage = build()
        lineage.setdefault("test_accuracy", evaluate(model, splits.test))
        lineage.setdefault("fidelity", agreement(model, victim, splits.test))
        card = card_for(model, splits.defender.classes, training=lineage.get("training"), lineage=lineage)
        save_model(model, card, path, overwrite=True)
        timings[f"make suspect: {name}"] = time.perf_counter() - begin

    make_suspect("direct-copy", lambda: run_attack("copy", victim, None, test=splits.test))
    make_suspect("fine-tuned", lambda: run_attack("finetune", victim, splits.attacker, test=splits.test, seed=args.seed))

    def independent():
        channels, height, width = splits.attacker.input_shape
        torch.manual_seed(args.seed + 1000)
        model = build_model(config.arch, channels, splits.attacker.num_classes, (height, width),
                            mean=victim_card.mean, std=victim_card.std)
        record = train(model, splits.attacker, TrainConfig(epochs=config.epochs, seed=args.seed + 1000),
                       description="independent model (attacker data)")
        return model, {"attack": "independent", "data": splits.attacker.name, "training": record.to_dict()}

    make_suspect("independent", independent)

    verdicts, rows, readings = [], {}, []
    by_setting: dict[str, dict[str, object]] = {}
    for name, path in suspects.items():
        model, card = load_model(path)
        rows[name] = {"test acc": f"{card.lineage['test_accuracy']:.4f}", "fidelity": f"{card.lineage['fidelity']:.4f}"}
        onnx_path = path.with_suffix(".onnx")
        if not onnx_path.exists():
            export_onnx(model, onnx_path, overwrite=True)
        white_box = WhiteBoxAccess(model, card, name=name, source=str(path))
        accesses = {
            "white-box": white_box,
            "black-box": white_box.as_black_box(),
            "black-box (ONNX)": open_suspect(onnx_path, name=name),
        }
        files = {"white-box": path, "black-box": path, "black-box (ONNX)": onnx_path}
        by_setting[name] = {}
        for label, access in accesses.items():
            begin = time.perf_counter()
            verdict = move.verify(opened, access, m=args.m, m_black_box=args.m_black_box, seed=args.seed)
            timings[f"verify {label}: {name}"] = time.perf_counter() - begin
            saved = verdict.save(out / "verdicts" / f"{name}.{label.replace(' ', '-').replace('(', '').replace(')', '')}.json")
            readings.append(with_paths(saved, protection=protection_dir, suspect=files[label]))
            by_setting[name][label] = verdict
            if label != "black-box (ONNX)":
                verdicts.append(verdict)

    console.print(verdict_table(verdicts, title="MOVE verification, white-box and black-box (Fashion-MNIST)", extra=rows))
    console.print(
        f"victim test accuracy {results['victim_test_accuracy']:.4f} vs benign model "
        f"{results['benign_test_accuracy']:.4f} (harmlessness); meta-classifier train accuracy "
        f"{results['meta_classifier']['train_accuracy']:.3f} on {results['feature_dimension']} gradient-sign features"
    )
    summary = render_summary(args, splits, results, by_setting, rows, timings)
    (out / "summary.md").write_text(summary)
    (out / "summary.json").write_text(json.dumps({"results": results, "verdicts": [v.to_dict() for v in verdicts],
                                                 "timings": timings}, indent=2))
    # The demo's own page, rewritten on every run like summary.md: every verdict, the protection's evidence.
    write_report(readings, out / "report.html", protections=[protection_dir], overwrite=True,
                 title="modelprove demo: MOVE verdicts for three suspects")
    for stage, seconds in timings.items():
        console.print(f"  {seconds:8.2f} s  {stage}")
    console.print(f"summary written to {out / 'summary.md'}; report of every verdict: {out / 'report.html'}")
    expected = {"direct-copy": True, "fine-tuned": True, "independent": False}
    wrong = [f"{v.suspect} ({v.setting})" for v in verdicts if v.suspect in expected and v.stolen != expected[v.suspect]]
    if wrong:
        console.print(f"[bold red]unexpected verdicts for: {', '.join(wrong)}[/]")
    return 0


def _signed(value: float | None) -> str:
    return "-" if value is None else f"{value:+.3f}"  # an inconclusive verdict has no effect


def render_summary(args, splits, results, by_setting, rows, timings) -> str:
    lines = [
        "| suspect | test acc | fidelity to victim | white-box delta_mu | p | decision | black-box delta_mu | p "
        "| decision | queries | black-box via ONNX: p |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, verdicts in by_setting.items():
        white, black, onnx = verdicts["white-box"], verdicts["black-box"], verdicts["black-box (ONNX)"]
        lines.append(f"| {name} | {rows[name]['test acc']} | {rows[name]['fidelity']} | "
                     f"{_signed(white.effect)} | {format_p(white.p_value)} | {white.decision} | "
                     f"{_signed(black.effect)} | {format_p(black.p_value)} | {black.decision} | {black.queries} | "
                     f"{format_p(onnx.p_value)} |")
    lines += [
        "",
        f"Victim test accuracy {results['victim_test_accuracy']:.4f}, benign model {results['benign_test_accuracy']:.4f}; "
        f"defender {len(splits.defender)} / attacker {len(splits.attacker)} / test {len(splits.test)} images; "
        f"white-box m = {args.m}, black-box m = {args.m_black_box} (each image costs 1 + 5 queries), "
        f"alpha 0.01, seed {args.seed}.",
        "",
        "| stage | seconds |",
        "|---|---|",
        *[f"| {stage} | {seconds:.2f} |" for stage, seconds in timings.items()],
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ModelproveError as error:
        console.print(f"[bold red]error:[/] {error}")
        sys.exit(2)
