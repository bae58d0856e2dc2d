"""`make demo`: protect a Fashion-MNIST classifier with MOVE, steal it, and verify suspects that were
stolen and suspects that cannot have been.

The defender protects its classifier (MOVE: style-transferred training images, a meta-classifier) and
calibrates it on a null panel of honest models it trains itself (three architectures, six training
recipes; kept in ``runs/demo/panels`` and trained once). The suspects:

- stolen: a direct copy, and the copy fine-tuned on the attacker's data;
- never stolen: two independent models trained from scratch on the attacker's own data (the victim's
  recipe, and Adam without augmentation), an untrained random network, and a prediction API that
  returns the same probabilities for every image.

Each is verified white-box (its weights) and black-box (probability vectors only; for model files also
from an ONNX export, which must agree), judged by the null-panel rule (the default) and, on the same
queries, by the paper's test against one benign model. The independent models are verified with
``--seeds`` verification seeds (other transformed images each time), so a lucky draw cannot hide an
accusation. Writes the protection, the suspects, every verdict as JSON, ``summary.md`` and
``report.html`` to ``runs/demo/``; a second run reuses what is there (``--fresh`` redoes everything).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

from modelprove.access import BlackBoxAccess, WhiteBoxAccess, open_suspect
from modelprove.attacks import run_attack
from modelprove.cli.main import self_test_table
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console
from modelprove.core.verdict import Verdict, format_p, verdict_table
from modelprove.data import load_splits
from modelprove.methods import move
from modelprove.methods.panel import PanelConfig
from modelprove.models import build_model, card_for, export_onnx, load_model, save_model
from modelprove.report import with_paths, write_report
from modelprove.training import TrainConfig, agreement, evaluate, train

# What each suspect is; the verdict a trustworthy tool gives is the demo's check on itself.
STOLEN_SUSPECTS = ("direct-copy", "fine-tuned")
INDEPENDENT_SUSPECTS = ("independent", "independent-adam")
NEVER_TRAINED = ("untrained", "constant-api")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/demo"))
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--defender-limit", type=int, default=10000, help="cap the defender's images (0: all)")
    parser.add_argument("--attacker-limit", type=int, default=10000, help="cap the attacker's images (0: all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--m", type=int, default=10, help="white-box m (the paper's 10)")
    parser.add_argument("--m-black-box", type=int, default=100, help="black-box m (the paper's 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=10, help="verification seeds for the independent models")
    parser.add_argument("--panel-size", type=int, default=12, help="null-panel models per architecture")
    parser.add_argument("--panel-archs", default="cnn_small,lenet5,mlp")
    parser.add_argument("--panel-epochs", type=int, default=5)
    parser.add_argument("--fresh", action="store_true", help="redo every stage instead of reusing runs/demo")
    parser.add_argument("--set", dest="pairs", action="append", default=[], help="MOVE parameter key=value")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    began = time.perf_counter()
    torch.set_num_threads(2)
    out: Path = args.out
    if args.fresh and out.exists():
        console.print(f"--fresh: removing the previous demo run in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    splits = load_splits(args.data, data=args.data_dir, attacker_fraction=0.5, seed=args.seed,
                         defender_limit=args.defender_limit or None, attacker_limit=args.attacker_limit or None)
    timings["load data"] = time.perf_counter() - start
    console.print(f"data: defender {len(splits.defender)}, attacker {len(splits.attacker)}, test {len(splits.test)} "
                  f"({args.data}; disjoint defender/attacker split, seed {args.seed})")

    config = config_from_pairs(move.MoveConfig, args.pairs, seed=args.seed, epochs=args.epochs, m=args.m)
    panel = PanelConfig(size=args.panel_size, architectures=args.panel_archs, epochs=args.panel_epochs,
                        store=str(out / "panels"))
    protection_dir = out / "protection"
    start = time.perf_counter()
    try:
        opened = move.MOVE.open(protection_dir)
        console.print(f"reusing the protection in {protection_dir} (pass --fresh to redo it)")
        reused = " (reused)"
    except ModelproveError:
        if protection_dir.exists():
            shutil.rmtree(protection_dir)  # an incomplete demo protection of our own: redo it
        move.MOVE.protect(splits.defender, splits.test, protection_dir, config, panel=panel)
        opened = move.MOVE.open(protection_dir)
        reused = ""
        if (out / "suspects").exists():  # stolen from an earlier victim: never reuse them with this one
            shutil.rmtree(out / "suspects")
    timings[f"protect and calibrate, in all{reused}"] = time.perf_counter() - start
    victim, victim_card = load_model(protection_dir / "victim.safetensors")
    results = opened.protection.manifest["results"]
    calibration = opened.protection.manifest["calibration"]
    for stage, seconds in results["seconds"].items():
        timings[f"protect: {stage.replace('_', ' ')}{reused and ' (when made)'}"] = seconds
    console.print(self_test_table(calibration))

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

    def fresh(seed: int):
        channels, height, width = splits.attacker.input_shape
        torch.manual_seed(seed)
        return build_model(config.arch, channels, splits.attacker.num_classes, (height, width),
                           mean=victim_card.mean, std=victim_card.std)

    def independent(seed: int, **recipe):
        def build():
            model = fresh(seed)
            training = TrainConfig(epochs=config.epochs, seed=seed, **recipe)
            record = train(model, splits.attacker, training, description=f"independent model, seed {seed}")
            return model, {"attack": "independent", "data": splits.attacker.name, "training": record.to_dict()}
        return build

    make_suspect("direct-copy", lambda: run_attack("copy", victim, None, test=splits.test))
    make_suspect("fine-tuned", lambda: run_attack("finetune", victim, splits.attacker, test=splits.test, seed=args.seed))
    make_suspect("independent", independent(args.seed + 1000))
    make_suspect("independent-adam", independent(args.seed + 2000, optimizer="adam", lr=1e-3, augmentation="none"))
    make_suspect("untrained", lambda: (fresh(args.seed + 3000), {"attack": "untrained (random initialisation)"}))

    verdicts: list[Verdict] = []
    rows, readings, table = {}, [], {}

    def verify(name: str, label: str, access, file: Path | None, seed: int = args.seed) -> dict[str, Verdict]:
        begin = time.perf_counter()
        both = move.MOVE.verify_rules(opened, access, m=args.m, m_black_box=args.m_black_box, seed=seed)
        timings.setdefault(f"verify {label}: {name}", time.perf_counter() - begin)
        if seed == args.seed:
            tag = label.replace(" ", "-").replace("(", "").replace(")", "")
            saved = both["panel"].save(out / "verdicts" / f"{name}.{tag}.json")
            readings.append(with_paths(saved, protection=protection_dir, suspect=file))
            table[name, label] = both
            if "ONNX" not in label:
                verdicts.append(both["panel"])
        return both

    accused: dict[tuple[str, str], list[str]] = {}
    for name, path in suspects.items():
        model, card = load_model(path)
        rows[name] = {"test acc": f"{card.lineage['test_accuracy']:.4f}", "fidelity": f"{card.lineage['fidelity']:.4f}"}
        onnx_path = path.with_suffix(".onnx")
        if not onnx_path.exists():
            export_onnx(model, onnx_path, overwrite=True)
        white_box = WhiteBoxAccess(model, card, name=name, source=str(path))
        accesses = {"white-box": (white_box, path), "black-box": (white_box.as_black_box(), path),
                    "black-box (ONNX)": (open_suspect(onnx_path, name=name), onnx_path)}
        for label, (access, file) in accesses.items():
            first = verify(name, label, access, file)
            if name in INDEPENDENT_SUSPECTS and "ONNX" not in label:
                more = [verify(name, label, access, file, seed) for seed in range(args.seed + 1, args.seed + args.seeds)]
                accused[name, label] = [rule for both in [first, *more] for rule, v in both.items() if v.stolen]

    # A prediction API that answers every image with the same probabilities (issue 14's constant model).
    row = torch.full((splits.test.num_classes,), 0.5 / (splits.test.num_classes - 1))
    row[0] = 0.5
    constant = BlackBoxAccess(lambda x: row.repeat(len(x), 1), num_classes=splits.test.num_classes,
                              input_shape=splits.test.input_shape, name="constant-api")
    rows["constant-api"] = {"test acc": f"{1 / splits.test.num_classes:.4f}", "fidelity": "-"}
    verify("constant-api", "black-box", constant, None)

    console.print(verdict_table(verdicts, title="MOVE verification, null-panel rule (Fashion-MNIST)", extra=rows))
    console.print(
        f"victim test accuracy {results['victim_test_accuracy']:.4f} vs benign model "
        f"{results['benign_test_accuracy']:.4f} (harmlessness); meta-classifier train accuracy "
        f"{results['meta_classifier']['train_accuracy']:.3f} on {results['feature_dimension']} gradient-sign features"
    )
    timings["the whole run, until this summary (wall)"] = time.perf_counter() - began
    summary = render_summary(args, splits, results, table, rows, accused, timings)
    write_text(out / "summary.md", summary)
    write_text(out / "summary.json", json.dumps({
        "results": results, "calibration": calibration, "verdicts": [v.to_dict() for v in verdicts],
        "paper_rule": {f"{n}|{s}": v["paper"].to_dict() for (n, s), v in table.items()},
        "independent_accusations": {f"{n}|{s}": rules for (n, s), rules in accused.items()},
        "seeds": args.seeds, "timings": timings}, indent=2))
    # The demo's own page, rewritten on every run like summary.md: every verdict, the protection's evidence.
    write_report(readings, out / "report.html", protections=[protection_dir], overwrite=True,
                 title="modelprove demo: MOVE verdicts for stolen and independent suspects")
    for stage, seconds in timings.items():
        console.print(f"  {seconds:8.2f} s  {stage}")
    console.print(f"summary written to {out / 'summary.md'}; report of every verdict: {out / 'report.html'}")
    wrong = [f"{v.suspect} ({v.setting})" for v in verdicts if v.stolen and v.suspect not in STOLEN_SUSPECTS]
    wrong += [f"{n} ({s}, seed of {args.seeds}, {rule} rule)" for (n, s), rules in accused.items()
              for rule in rules if rule == "panel"]
    if wrong:
        console.print(f"[bold red]false accusations: {', '.join(wrong)}[/]")  # a finding to report, not hide
    return 0


def write_text(path: Path, text: str) -> None:
    staged = path.with_name(path.name + ".partial")
    staged.write_text(text)
    staged.replace(path)


def _cell(verdict: Verdict) -> str:
    if verdict.inconclusive:  # the reason's first clause; the verdict's JSON has all of it
        which = f" (the {verdict.panel['architecture']} panel)" if verdict.panel else ""
        return f"inconclusive: {verdict.reason.split(':')[0]}{which}" if verdict.reason else "inconclusive"
    statistic = "-" if verdict.statistic is None else f"{verdict.statistic:.3f}"
    return f"{verdict.decision}, {statistic}, p {format_p(verdict.p_value)}"


def render_summary(args, splits, results, table, rows, accused, timings) -> str:
    lines = [
        "| suspect | test acc | fidelity to victim | setting | null-panel rule: verdict, statistic, p "
        "| the paper's test: verdict, statistic, p | queries |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, label), both in table.items():
        panel = both["panel"]
        queries = "-" if panel.queries is None else str(panel.queries)
        lines.append(f"| {name} | {rows[name]['test acc']} | {rows[name]['fidelity']} | {label} | "
                     f"{_cell(panel)} | {_cell(both['paper'])} | {queries} |")
    lines += ["", f"Independent models verified with {args.seeds} verification seeds "
              f"({args.seed}..{args.seed + args.seeds - 1}): how often each rule accused them.", "",
              "| suspect | setting | null-panel rule | the paper's test |", "|---|---|---|---|"]
    for (name, label), rules in accused.items():
        lines.append(f"| {name} | {label} | {rules.count('panel')} of {args.seeds} | {rules.count('paper')} of {args.seeds} |")
    lines += [
        "",
        f"Victim test accuracy {results['victim_test_accuracy']:.4f}, benign model {results['benign_test_accuracy']:.4f}; "
        f"defender {len(splits.defender)} / attacker {len(splits.attacker)} / test {len(splits.test)} images; "
        f"null panel {args.panel_size} models per architecture ({args.panel_archs}), {args.panel_epochs} epochs; "
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
