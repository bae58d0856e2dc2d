"""A benchmark grid described in a small TOML file: dataset x victim training x methods x attacks x seeds.

Example (the shipped presets are in ``modelprove/bench/presets/``)::

    name = "move-fmnist"
    seeds = [0, 1, 2]                     # victim seeds; attacks and verification use the same seed
    settings = ["white-box", "black-box"]
    false_claims = [200]                  # optional: independents (by seed) whose fingerprints claim every victim

    [data]
    dataset = "fashion-mnist"             # a load_dataset name or path, or "mnist-digits"
    defender_limit = 10000

    [training]                            # every victim, benign and independent model
    arch = "cnn_small"
    epochs = 5

    [[methods]]
    name = "move"
    set = { m = 10 }                      # method parameters (as `protect --set`)

    [[attacks]]
    label = "Distillation"                # the paper's row name
    attack = "distill:epochs=5"           # a `modelprove steal --attack` string (chains with '>')

    [[attacks]]                           # a point of a curve against the grid's top-level
    label = "Copy, fine-tuned on 10%"     # sweep = "sample rate" (e.g. MOVE Fig. 6's fine-tuning rate)
    attack = "copy>finetune:fraction=0.1"
    curve = "Direct-copy"
    x = 0.1

    [[attacks]]                           # a removal curve: the stage applied 1, 2, ..., repeat times
    label = "Fine-tuning"                 # rows "Fine-tuning, 10 epochs", "Fine-tuning, 20 epochs", ...
    attack = "finetune:epochs=10,lr=0.001,schedule=constant"
    repeat = 10                           # each point is the one before plus one stage (cached, not redone)

    [[independents]]                      # models that share nothing with the victim but the task
    arch = "lenet5"
    seeds = [200, 201]
    optimizer = "adam"                    # their training recipe (default: [training]'s, SGD)
    lr = 0.001
    augmentation = "none"
    data_fraction = 0.5                   # of the attacker's part
    student = "distill:epochs=5"          # optional: the independent is this attack's student of that model

    [panel]                               # the null panel every protection is calibrated on
    size = 8                              # honest models per architecture
    architectures = "cnn_small,lenet5,vgg_small"
    epochs = 5
    recipes = "sgd-crop,adam-none"        # optional (methods/panel.py RECIPES); default: the first four

    [[studies]]                           # a measurement of each protection (bench.studies), e.g. the
    name = "key-detector"                 # evasion detectors of key-sample watermarks
    methods = ["blind-watermark"]         # method labels (default: every method it applies to)
    set = { detector_seeds = 3 }

    [resources]                           # optional: Dask worker resources the jobs need
    train = { GPU = 1 }                   # jobs that train (models, protections, suspects)
    verify = {}                           # jobs that verify cells
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelprove.core.errors import ModelproveError

PRESETS_DIR = Path(__file__).parent / "presets"
SETTINGS = ("white-box", "black-box", "label-only")
FALSE_CLAIM = "False claim"  # the row of a victim verified against an independent model's fingerprint (false_claims)
JOB_RESOURCES = ("train", "verify")  # the two sorts of job a grid's [resources] can place


class BenchConfigError(ModelproveError):
    """A preset or grid file that cannot be run as written."""


@dataclass(frozen=True)
class DataSpec:
    dataset: str = "fashion-mnist"
    data_dir: str | None = None
    attacker_fraction: float = 0.5
    split_seed: int = 0  # the defender/attacker split is the same for every seed of the grid
    defender_limit: int | None = None
    attacker_limit: int | None = None
    test_limit: int | None = None


@dataclass(frozen=True)
class TrainingSpec:
    arch: str = "cnn_small"
    epochs: int = 5
    batch_size: int = 128
    lr: float = 0.05
    augmentation: str = "crop"


@dataclass(frozen=True)
class MethodEntry:
    name: str
    label: str
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AttackEntry:
    label: str
    attack: str
    paper: str | None = None  # the row of the paper's table this reproduces
    # A point of a curve (bench.report): the curve's label and the point's x, either against the grid's
    # ``sweep`` (explicit curve and x) or a removal curve made by ``repeat`` (x: the epochs of all its stages,
    # or their count when a stage names no epochs).
    curve: str | None = None
    x: float | None = None


@dataclass(frozen=True)
class StudyEntry:
    """A measurement of every protection of ``methods`` (labels; empty: every method it applies to)."""

    name: str
    methods: tuple[str, ...] = ()
    set: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IndependentEntry:
    arch: str
    seeds: tuple[int, ...]
    data: str = "attacker"  # the attacker's part of the training set: disjoint from the victim's
    epochs: int | None = None  # default: [training] epochs
    # The recipe (default: [training]'s): honest owners train in many ways, and a rule must clear them all.
    optimizer: str = "sgd"
    lr: float | None = None  # default: [training] lr
    augmentation: str | None = None  # default: [training] augmentation
    data_fraction: float = 1.0  # of the attacker's part, a seeded subset
    # An attack string (e.g. "distill:epochs=5"): the independent model is then the student this attack
    # makes of the model above (its honest teacher) on the attacker's part. Distilling one's own model is an
    # honest recipe, and a method that has learned "is a student" rather than "learned from the victim"
    # accuses such models.
    student: str | None = None

    def recipe_name(self, training: "TrainingSpec") -> str:
        return (f"{self.optimizer}-lr{self.lr if self.lr is not None else training.lr:g}-"
                f"{self.augmentation or training.augmentation}-e{self.epochs or training.epochs}"
                + (f"-d{self.data_fraction:g}" if self.data_fraction < 1 else "")
                + (f"-student-{self.student.replace(':', '-').replace('=', '').replace(',', '-')}" if self.student else ""))


@dataclass(frozen=True)
class PanelSpec:
    """The null panel of the grid's task (methods.panel.PanelConfig's fields)."""

    size: int = 8
    architectures: str = "cnn_small,lenet5,vgg_small"
    epochs: int = 5
    recipes: str = ""  # empty: methods.panel.FIRST_PANEL_RECIPES (what every grid's cache keys stand for)

    def panel_config(self):
        """The methods.panel.PanelConfig of this grid (it validates the fields). No recipes named: the
        first, four-recipe panel, which every grid's cache keys (``recipes = ""``) stand for."""
        from modelprove.methods.panel import FIRST_PANEL_RECIPES, PanelConfig

        return PanelConfig(size=self.size, architectures=self.architectures, epochs=self.epochs,
                           recipes=self.recipes or ",".join(FIRST_PANEL_RECIPES))


@dataclass(frozen=True)
class BenchConfig:
    name: str
    description: str
    data: DataSpec
    training: TrainingSpec
    seeds: tuple[int, ...]
    settings: tuple[str, ...]
    methods: tuple[MethodEntry, ...]
    attacks: tuple[AttackEntry, ...]
    independents: tuple[IndependentEntry, ...]
    alpha: float = 0.01
    source: str = ""
    paper_table: str = ""  # which paper table the rows are compared with (bench.paper), if any
    sweep: str = ""  # what the attacks' x measures, when they are points of curves (e.g. "sample rate")
    panel: PanelSpec = field(default_factory=PanelSpec)
    # Dask worker resources (e.g. {"train": {"GPU": 1}}): where jobs may run, never what they make, so no
    # cache key or record depends on them.
    resources: dict[str, dict[str, float]] = field(default_factory=dict)
    studies: tuple[StudyEntry, ...] = ()
    # Seeds of independent models that act as a false claimant's source: each fingerprint method (a
    # method that fingerprints an already trained model) fingerprints that model on the attacker's data,
    # and every victim is verified against it — it must not match (CAE's false-claim check).
    false_claims: tuple[int, ...] = ()

    def independent_models(self) -> list[tuple[IndependentEntry, int]]:
        """(entry, seed) of every independent model."""
        return [(entry, seed) for entry in self.independents for seed in entry.seeds]


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_bench_config(name_or_path: str | Path) -> BenchConfig:
    """A preset by name (``smoke``, ``move-fmnist``, ``multistage``) or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix and (PRESETS_DIR / f"{name_or_path}.toml").is_file():
        path = PRESETS_DIR / f"{name_or_path}.toml"
    if not path.is_file():
        raise BenchConfigError(
            f"no preset or grid file {str(name_or_path)!r}.",
            fix=f"use one of the presets ({', '.join(preset_names())}) or the path of a TOML file.",
        )
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise BenchConfigError(f"not valid TOML: {exc}.", path=path) from None
    return parse_bench_config(raw, source=str(path))


def parse_bench_config(raw: dict[str, Any], source: str = "<grid>") -> BenchConfig:
    from modelprove.attacks import get_attack, parse_attack
    from modelprove.methods import METHODS
    from modelprove.models import ARCHITECTURES

    def fail(field_name: str, problem: str, fix: str) -> BenchConfigError:
        return BenchConfigError(f"field {field_name!r}: {problem}.", path=source, fix=fix)

    known = {"name", "description", "data", "training", "seeds", "settings", "methods", "attacks", "independents",
             "alpha", "paper_table", "panel", "resources", "sweep", "studies", "false_claims"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise fail(unknown[0], "is not a grid field", f"use only {', '.join(sorted(known))}")

    def table(key: str, cls: type) -> Any:
        values = raw.get(key, {})
        if not isinstance(values, dict):
            raise fail(key, "must be a table", f"write [{key}] with key = value lines")
        names = set(cls.__dataclass_fields__)
        extra = sorted(set(values) - names)
        if extra:
            raise fail(f"{key}.{extra[0]}", "is not known", f"known: {', '.join(sorted(names))}")
        return cls(**values)

    data = table("data", DataSpec)
    training = table("training", TrainingSpec)
    if training.arch not in ARCHITECTURES:
        raise fail("training.arch", f"unknown architecture {training.arch!r}", f"one of {', '.join(ARCHITECTURES)}")
    seeds = raw.get("seeds", [0])
    if not (isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds)) or len(set(seeds)) != len(seeds):
        raise fail("seeds", f"expected a non-empty list of distinct integers, got {seeds!r}", "e.g. seeds = [0, 1, 2]")
    settings = raw.get("settings", list(SETTINGS))
    if not settings or any(s not in SETTINGS for s in settings):
        raise fail("settings", f"expected a list of {', '.join(SETTINGS)}, got {settings!r}", 'e.g. settings = ["white-box"]')

    methods = []
    for i, entry in enumerate(raw.get("methods", [])):
        name = entry.get("name")
        if name not in METHODS:
            raise fail(f"methods[{i}].name", f"unknown method {name!r}", f"one of {', '.join(METHODS)}")
        if not isinstance(entry.get("set", {}), dict):
            raise fail(f"methods[{i}].set", "must be a table", "e.g. set = { m = 10 }")
        methods.append(MethodEntry(name, entry.get("label", name), dict(entry.get("set", {}))))
    if not methods:
        raise fail("methods", "the grid has no method", 'add [[methods]] name = "move"')

    attacks = []
    for i, entry in enumerate(raw.get("attacks", [])):
        attack = entry.get("attack")
        if not isinstance(attack, str):
            raise fail(f"attacks[{i}].attack", "missing", 'e.g. attack = "distill:epochs=5"')
        try:
            stages = parse_attack(attack)
            for stage in stages:
                get_attack(stage.name)
        except ModelproveError as exc:
            raise fail(f"attacks[{i}].attack", str(exc), "see `modelprove steal --list`") from None
        label = entry.get("label", attack)
        curve, x, repeat = entry.get("curve"), entry.get("x"), entry.get("repeat")
        if repeat is not None and (curve is not None or x is not None):
            raise fail(f"attacks[{i}]", "has repeat and curve/x", "a removal curve (repeat) names its points itself")
        if (curve is None) != (x is None):
            raise fail(f"attacks[{i}]", "has one of curve and x but not the other",
                       'give both (curve = "Direct-copy", x = 0.1) or neither')
        if x is not None and (not isinstance(x, (int, float)) or isinstance(x, bool) or not isinstance(curve, str)):
            raise fail(f"attacks[{i}].x", f"expected a number and a curve name, got x = {x!r}, curve = {curve!r}",
                       'e.g. curve = "Direct-copy", x = 0.1')
        if repeat is None:
            attacks.append(AttackEntry(label, attack, entry.get("paper"), curve, None if x is None else float(x)))
            continue
        if not isinstance(repeat, int) or isinstance(repeat, bool) or repeat < 1:
            raise fail(f"attacks[{i}].repeat", f"expected an integer >= 1, got {repeat!r}", "e.g. repeat = 10")
        epochs = _stage_epochs(stages)
        for k in range(1, repeat + 1):
            x = k if epochs is None else k * epochs
            point = f"{label}, {x:g} {'stages' if epochs is None else 'epochs'}"
            attacks.append(AttackEntry(point, ">".join([attack] * k), entry.get("paper"), curve=label, x=float(x)))
    labels = [a.label for a in attacks]
    if len(set(labels)) != len(labels):
        repeated = next(label for label in labels if labels.count(label) > 1)
        raise fail("attacks", f"two attacks are labelled {repeated!r}", "give each attack (and curve) its own label")
    sweep = raw.get("sweep", "")
    explicit = any(entry.get("x") is not None for entry in raw.get("attacks", []))
    if explicit and not (isinstance(sweep, str) and sweep):
        raise fail("sweep", "attacks have x values but the grid does not say what x is",
                   'e.g. sweep = "fine-tuning sample rate"')

    panel = table("panel", PanelSpec)
    try:
        panel.panel_config()
    except ModelproveError as exc:
        raise fail("panel", str(exc), "see methods/panel.py for the panel's fields") from None

    independents = []
    independent_fields = set(IndependentEntry.__dataclass_fields__)
    for i, entry in enumerate(raw.get("independents", [])):
        extra = sorted(set(entry) - independent_fields)
        if extra:
            raise fail(f"independents[{i}].{extra[0]}", "is not known", f"known: {', '.join(sorted(independent_fields))}")
        arch, entry_seeds = entry.get("arch"), entry.get("seeds", [])
        if arch not in ARCHITECTURES:
            raise fail(f"independents[{i}].arch", f"unknown architecture {arch!r}", f"one of {', '.join(ARCHITECTURES)}")
        if not entry_seeds or not all(isinstance(s, int) for s in entry_seeds):
            raise fail(f"independents[{i}].seeds", "expected a non-empty list of integers", "e.g. seeds = [100, 101]")
        clash = sorted(set(entry_seeds) & set(seeds)) if arch == training.arch else []
        if clash:
            raise fail(f"independents[{i}].seeds", f"seed {clash[0]} is also a victim seed, so that model would share "
                       "its initialisation with a victim", "use seeds the victims do not use")
        part = entry.get("data", "attacker")
        if part != "attacker":
            raise fail(f"independents[{i}].data", f"must be 'attacker' (got {part!r}): an independent model may share "
                       "nothing with the victim but the task", 'remove the field or write data = "attacker"')
        optimizer = entry.get("optimizer", "sgd")
        if optimizer not in ("sgd", "adam"):
            raise fail(f"independents[{i}].optimizer", f"must be 'sgd' or 'adam', got {optimizer!r}", 'e.g. optimizer = "adam"')
        fraction = entry.get("data_fraction", 1.0)
        if not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise fail(f"independents[{i}].data_fraction", f"must be in (0, 1], got {fraction!r}", "e.g. data_fraction = 0.5")
        student = entry.get("student")
        if student is not None:
            try:
                stages = parse_attack(student) if isinstance(student, str) else []
                for stage in stages:
                    get_attack(stage.name)
            except ModelproveError as exc:
                raise fail(f"independents[{i}].student", str(exc), "see `modelprove steal --list`") from None
            if len(stages) != 1:
                raise fail(f"independents[{i}].student", f"expected one attack string, got {student!r}",
                           'e.g. student = "distill:epochs=5"')
        independents.append(IndependentEntry(arch, tuple(entry_seeds), part, entry.get("epochs"), optimizer,
                                             entry.get("lr"), entry.get("augmentation"), float(fraction), student))

    from modelprove.bench.studies import STUDIES

    studies = []
    method_labels = {m.label for m in methods}
    for i, entry in enumerate(raw.get("studies", [])):
        extra = sorted(set(entry) - {"name", "methods", "set"})
        if extra:
            raise fail(f"studies[{i}].{extra[0]}", "is not known", "known: methods, name, set")
        name = entry.get("name")
        if name not in STUDIES:
            raise fail(f"studies[{i}].name", f"unknown study {name!r}", f"one of {', '.join(STUDIES)}")
        chosen = entry.get("methods", [])
        if not isinstance(chosen, list) or any(label not in method_labels for label in chosen):
            raise fail(f"studies[{i}].methods", f"expected a list of the grid's method labels, got {chosen!r}",
                       f"pick from {', '.join(sorted(method_labels))}")
        params = entry.get("set", {})
        if not isinstance(params, dict):
            raise fail(f"studies[{i}].set", "must be a table", "e.g. set = { detector_seeds = 3 }")
        try:
            STUDIES[name].parameters(params)
        except ModelproveError as exc:
            raise fail(f"studies[{i}].set", str(exc), f"see bench/studies.py for {name}'s parameters") from None
        studies.append(StudyEntry(name, tuple(chosen), dict(params)))

    false_claims = raw.get("false_claims", [])
    seeds_of_independents = [s for entry in independents for s in entry.seeds]
    if not isinstance(false_claims, list) or any(not isinstance(s, int) or seeds_of_independents.count(s) != 1
                                                 for s in false_claims) or len(set(false_claims)) != len(false_claims):
        raise fail("false_claims", f"expected distinct seeds, each of exactly one independent model, got {false_claims!r}",
                   "e.g. false_claims = [100] (an [[independents]] seed)")
    if false_claims and not any("model" in METHODS[m.name].inputs for m in methods):
        raise fail("false_claims", "no method of the grid fingerprints an already trained model",
                   'add a fingerprint method (e.g. name = "cae") or remove false_claims')

    alpha = raw.get("alpha", 0.01)
    if not isinstance(alpha, float) or not 0 < alpha < 1:
        raise fail("alpha", f"expected a number strictly between 0 and 1, got {alpha!r}", "e.g. alpha = 0.01")
    resources = raw.get("resources", {})
    if not isinstance(resources, dict):
        raise fail("resources", "must be a table", "write [resources] with train = { GPU = 1 }")
    for sort, amounts in resources.items():
        if sort not in JOB_RESOURCES:
            raise fail(f"resources.{sort}", "is not a sort of job", f"use {' or '.join(JOB_RESOURCES)}")
        if not isinstance(amounts, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in amounts.values()):
            raise fail(f"resources.{sort}", f"expected a table of positive amounts, got {amounts!r}",
                       f"e.g. {sort} = {{ GPU = 1 }} (names as the workers' --resources)")
    return BenchConfig(
        name=raw.get("name", Path(source).stem), description=raw.get("description", ""), data=data,
        training=training, seeds=tuple(seeds), settings=tuple(settings), methods=tuple(methods),
        attacks=tuple(attacks), independents=tuple(independents), alpha=alpha, source=source,
        paper_table=raw.get("paper_table", ""), panel=panel, sweep=sweep,
        resources={sort: {name: float(v) for name, v in amounts.items()} for sort, amounts in resources.items()},
        studies=tuple(studies),
        false_claims=tuple(false_claims),
    )


def _stage_epochs(stages) -> int | None:
    """The epochs a repeated attack's stages train for (the sum over a chain), or None if a stage names none."""
    total = 0
    for stage in stages:
        value = dict(pair.partition("=")[::2] for pair in stage.pairs).get("epochs")
        if value is None or not value.isdigit():
            return None
        total += int(value)
    return total
