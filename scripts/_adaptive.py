"""What scripts/move_saliency.py and scripts/move_strip.py share: the protections and suspects of the
`move-adaptive` bench grid, read from (or built into) the bench cache, and verification of a suspect
behind a thief's server (an access object) by both rules."""

from __future__ import annotations

import argparse
import dataclasses
import io
import os
import statistics
from pathlib import Path
from typing import Any

import torch

from modelprove.access import BLACK_BOX, LabelOnlyAccess, local_access
from modelprove.bench import load_bench_config
from modelprove.bench.runner import _Grid  # the grid's cache-backed protections and suspects
from modelprove.core.fileio import atomic_write_bytes
from modelprove.core.verdict import format_p
from modelprove.models import Classifier


def arguments(description: str, report: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="move-adaptive", help="the bench preset whose protections and suspects are used")
    parser.add_argument("--cache", type=Path, default=Path("runs/bench/cache"),
                        help="the bench cache (`modelprove bench move-adaptive --cache` of the same path reuses it)")
    parser.add_argument("--seeds", default="", help="comma-separated victim seeds (default: the grid's)")
    parser.add_argument("--report", type=Path, default=Path(report))
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


class AdaptiveGrid:
    """The grid's models by name: a seed's opened protection and victim per method label, and suspects."""

    def __init__(self, name: str, cache: Path, seeds: str = ""):
        config = load_bench_config(name)
        if seeds:
            config = dataclasses.replace(config, seeds=tuple(int(s) for s in seeds.split(",")))
        self.config = config
        self.grid = _Grid(config, None, cache, None)
        self.splits = self.grid.splits

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.config.seeds

    def describe(self) -> str:
        """The grid's data and training, in a sentence."""
        data, training = self.config.data, self.config.training
        return (f"{data.dataset}, defender {data.defender_limit or 'all'} / attacker {data.attacker_limit or 'all'} / "
                f"test {data.test_limit or 'all'} images, {training.arch} victims trained {training.epochs} epochs, "
                f"victim seeds {list(self.seeds)}")

    def protection(self, seed: int, method: str) -> tuple[Any, Any, Classifier, dict[str, Any]]:
        """(method spec, opened protection, victim, verify options) of ``method`` (a label) at ``seed``."""
        prot = self.grid.protections[(seed, method)]
        opened, victim, _ = self.grid.protection(prot)
        return prot["spec"], opened, victim, prot["options"]

    def suspect(self, seed: int, method: str, attack: str) -> Classifier:
        """The suspect of the attack labelled ``attack`` stolen from ``method``'s victim at ``seed``."""
        _, _, victim, _ = self.protection(seed, method)
        entry = next(a for a in self.config.attacks if a.label == attack)
        return self.grid.suspect(seed, method, entry, victim)[0]

    def independents(self) -> list[tuple[str, Classifier]]:
        """(name, model) of every independent model of the grid."""
        seen, models = set(), []
        for cell in self.grid.plan:
            if cell["kind"] == "independent" and cell["independent"]["name"] not in seen:
                seen.add(cell["independent"]["name"])
                models.append((cell["independent"]["name"], self.grid.independent(cell["independent"])[0]))
        return models


def verify_both(spec: Any, opened: Any, access: LabelOnlyAccess, seed: int, name: str,
                options: dict[str, Any]) -> dict[str, Any]:
    """Black-box verification of ``access`` by both rules, as the bench verifies a cell (same seed, same rows)."""
    verdicts = spec.verify_rules(opened, access, setting=BLACK_BOX, seed=seed, suspect_name=name, **options)
    panel, paper = verdicts["panel"], verdicts["paper"]
    def said(verdict: Any) -> str:  # an inconclusive verdict says why, in a few words
        if verdict.outcome != "inconclusive":
            return verdict.outcome
        return "inconclusive (" + " ".join(str(verdict.reason).split()[:8]).rstrip(".,;:") + " …)"

    return {"panel": said(panel), "p": panel.p_value, "paper": said(paper), "paper_p": paper.p_value,
            "statistic": panel.statistic, "delta_mu": paper.effect, "queries": access.queries}


def plain_access(model: Classifier, name: str) -> LabelOnlyAccess:
    return local_access(model, BLACK_BOX, name=name)


def outcome(result: dict[str, Any]) -> str:
    """'stolen, p 1e-05 / stolen, p 1e-30' (null panel / the paper's test)."""
    def one(verdict: str, p: float | None) -> str:
        return verdict if p is None else f"{verdict}, p {format_p(p)}"

    return f"{one(result['panel'], result['p'])} / {one(result['paper'], result['paper_p'])}"


def statistic(result: dict[str, Any]) -> str:
    return "n/a" if result["statistic"] is None else f"{result['statistic']:.3f}"


def mean(values: list[float]) -> str:
    """'mean ± sd' of one value per seed (no sd for one seed)."""
    return f"{statistics.mean(values):.3f}" + (f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else "")


def save_figure(figure: Any, path: Path) -> Path:
    """A matplotlib figure as a PNG at ``path`` (atomically), closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return atomic_write_bytes(path, buffer.getvalue())


def setup(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def command(script: str, argv: list[str]) -> str:
    return " ".join(["python", script, *argv])
