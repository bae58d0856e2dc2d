"""Run every registered attack on the `make demo` victim and write docs/results/attacks-fmnist.md.

Each attack runs with its default settings on the Fashion-MNIST attacker split (the half of the
training set `protect` kept out: seed 0, attacker fraction 0.5). Suspects are cached under
``runs/attacks/NAME.safetensors`` and reused on a rerun when their recorded attack string still
matches (``--fresh`` redoes them all). The table lists, per attack: family, oracle, test
accuracy, fidelity (top-1 agreement with the victim on the test set), victim queries, wall
seconds, and our setting next to the paper's (each attack module's ``PAPER_SETTING``).
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import torch

from modelprove.attacks import ATTACKS, run_attack
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console
from modelprove.data import load_splits
from modelprove.models import card_for, load_model, model_paths, save_model

DEFAULT_VICTIM = Path("runs/demo/protection/victim.safetensors")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--victim", type=Path, default=DEFAULT_VICTIM, help="victim model file (make demo's)")
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--attacker-limit", type=int, default=None, help="cap the attacker's images")
    parser.add_argument("--test-limit", type=int, default=None, help="cap the test images")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/attacks"), help="where suspects are cached")
    parser.add_argument("--table", type=Path, default=Path("docs/results/attacks-fmnist.md"))
    parser.add_argument("--only", default=None, help="comma-separated attack names (default: every attack)")
    parser.add_argument("--set", dest="pairs", action="append", default=[],
                        help="key=value for every attack that has the field, or NAME.key=value for one "
                             "(e.g. scaled-down test runs); the table shows every non-default value")
    parser.add_argument("--fresh", action="store_true", help="rerun attacks instead of reusing cached suspects")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads (2 = this machine's cores; use 1 when other jobs share the CPU)")
    return parser.parse_args(argv)


def attack_string(name: str, pairs: list[str]) -> str:
    """``name`` with the ``--set`` pairs that apply to its config, as run_attack reads it."""
    fields = {f.name for f in dataclasses.fields(ATTACKS[name].config)}
    mine = []
    for pair in pairs:
        key, _, value = pair.partition("=")
        target, dot, field = key.rpartition(".")
        if (not dot and key in fields) or (dot and target == name):
            mine.append(f"{field if dot else key}={value}")
    return name + (":" + ",".join(mine) if mine else "")


def check_pairs(pairs: list[str]) -> None:
    known = {f.name for spec in ATTACKS.values() for f in dataclasses.fields(spec.config)}
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        target, dot, field = key.rpartition(".")
        if not sep or (dot and target not in ATTACKS) or (field if dot else key) not in known:
            raise ModelproveError(f"--set {pair!r} names no attack parameter.",
                                  fix="write key=value or NAME.key=value; `modelprove steal --list` shows them.")


def paper_setting(name: str) -> str:
    module = sys.modules[ATTACKS[name].steal.__module__]
    return getattr(module, "PAPER_SETTING", "not stated")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if not model_paths(args.victim)[0].exists():
        console.print(f"[bold red]error:[/] no victim at {args.victim}. Run `make demo` first (it trains and "
                      "protects the Fashion-MNIST victim this table attacks), or pass --victim.", highlight=False)
        return 2
    try:
        check_pairs(args.pairs)
        names = args.only.split(",") if args.only else list(ATTACKS)
        for name in names:
            if name not in ATTACKS:
                raise ModelproveError(f"--only names unknown attack {name!r}; known: {', '.join(ATTACKS)}.")
        victim, card = load_model(args.victim)
        splits = load_splits(args.data, data=args.data_dir, attacker_fraction=0.5, seed=0,
                             attacker_limit=args.attacker_limit, test_limit=args.test_limit)
    except ModelproveError as error:
        console.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    args.out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        attack = attack_string(name, args.pairs)
        path = args.out_dir / f"{name}.safetensors"
        lineage = None
        if path.exists() and not args.fresh:
            _, cached = load_model(path)
            if cached.lineage.get("attack") == attack and cached.lineage.get("victim_sha256") == card.weights_sha256:
                console.print(f"reusing suspect {path} ({attack})")
                lineage = cached.lineage
        if lineage is None:
            console.print(f"running {attack}")
            start = time.perf_counter()
            try:
                suspect, lineage = run_attack(attack, victim, splits.attacker, test=splits.test, seed=0)
            except ModelproveError as error:
                console.print(f"[bold red]error:[/] attack {attack}: {error}", highlight=False)
                return 2
            lineage["wall_seconds"] = round(time.perf_counter() - start, 1)
            lineage["victim_sha256"] = card.weights_sha256
            training = lineage["stages"][-1].get("training")
            save_model(suspect, card_for(suspect, card.classes, training=training if isinstance(training, dict) else None,
                                         lineage=lineage), path, overwrite=True)
        rows.append((name, attack, lineage))
    write_table(args, rows, splits)
    console.print(f"wrote {args.table}")
    return 0


def write_table(args: argparse.Namespace, rows: list, splits) -> None:
    command = "python scripts/attack_table.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    lines = [
        "# Attacks on the `make demo` Fashion-MNIST victim",
        "",
        "<!-- generated file: rerun the command below instead of editing it -->",
        f"Generated by `{command.strip()}` on victim `{args.victim}`, attacker split of "
        f"{len(splits.attacker)} images ({splits.attacker.name}), test set of {len(splits.test)} images. "
        "Fidelity is top-1 agreement with the victim on the test set; queries count images sent to the victim; "
        "wall seconds include querying and training on this machine.",
        "",
        "| attack | family | oracle | test accuracy | fidelity | queries | wall seconds | setting: ours vs the paper's |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for name, attack, lineage in rows:
        spec = ATTACKS[name]
        seconds = lineage.get("wall_seconds", lineage["seconds"])
        setting = paper_setting(name) + (f" (run as `{attack}`)" if attack != name else "")
        lines.append(f"| {name} | {spec.family} | {spec.oracle} | {lineage['test_accuracy']:.4f} | "
                     f"{lineage['fidelity']:.4f} | {lineage['queries']} | {seconds:.1f} | {setting} |")
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
