"""The one verdict record: every method's answer reads alike, prints as a table, saves as JSON.

A verdict has three outcomes. ``stolen`` and ``not stolen`` come from a decision rule (stats.rules)
applied to a method's evidence; ``inconclusive`` says, with its ``reason``, that the method has no power
here (the suspect is not a competent model of the task, its architecture has no null panel, honest
models of its architecture already score like the victim, or the protection fails its own self-test).
Verdicts are built by one function, :func:`modelprove.stats.verdicts.build_verdict`.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import modelprove
from modelprove.core.errors import ModelproveError
from modelprove.core.fileio import atomic_write_json, read_json

STOLEN = "stolen"
NOT_STOLEN = "not stolen"
INCONCLUSIVE = "inconclusive"
OUTCOMES = (STOLEN, NOT_STOLEN, INCONCLUSIVE)
FORMAT = "modelprove-verdict/2"


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Verdict:
    """Is ``suspect`` derived from the protected model, and how sure is that?

    ``statistic`` is the suspect's model-level statistic (MOVE: mean meta-classifier output; a
    watermark: key accuracy; CAE: CAEAcc), ``effect`` the rule's effect size under ``effect_name``
    (the null-panel rule: standardised distance above the panel; the paper's paired test: delta_mu).
    ``panel``, ``self_test`` and ``competence`` summarise what the rule compared the suspect with.
    """

    method: str
    setting: str
    suspect: str
    outcome: str
    reason: str
    rule: str
    p_value: float | None
    alpha: float
    statistic: float | None
    statistic_name: str
    effect: float | None
    effect_name: str
    samples: int
    queries: int | None = None
    seconds: float = 0.0
    panel: dict[str, Any] | None = None
    self_test: dict[str, Any] | None = None
    competence: dict[str, Any] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    seed: int | None = None
    protection: str | None = None
    protection_id: str | None = None
    hashes: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)
    modelprove_version: str = modelprove.__version__
    created: str = field(default_factory=utc_now)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, got {self.outcome!r}")

    @property
    def stolen(self) -> bool:
        return self.outcome == STOLEN

    @property
    def inconclusive(self) -> bool:
        return self.outcome == INCONCLUSIVE

    @property
    def decision(self) -> str:
        return {STOLEN: "STOLEN", NOT_STOLEN: "not stolen", INCONCLUSIVE: "inconclusive"}[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record.update(format=FORMAT, stolen=self.stolen, decision=self.decision)
        return record

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> "Verdict":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in record.items() if k in known})

    @classmethod
    def load(cls, path: str | Path) -> "Verdict":
        record = read_json(path, what="verdict")
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ModelproveError(f"not a modelprove verdict (field 'format' is not {FORMAT!r}).", path=path,
                                  fix="pass a verdict written by `modelprove verify --json`.")
        return cls.from_dict(record)


def format_p(p: float | None) -> str:
    if p is None:
        return "-"
    if math.isnan(p):
        return "nan"
    if p == 0.0:
        return "0"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.3f}"


def _number(value: float | None, fmt: str = "{:+.3f}") -> str:
    return "-" if value is None else fmt.format(value)


def verdict_table(verdicts: list[Verdict], title: str = "Verdicts", extra: dict[str, dict[str, str]] | None = None):
    """A rich table of verdicts; ``extra`` maps suspect name -> additional columns (e.g. accuracy)."""
    from rich.table import Table

    extra = extra or {}
    extra_columns = list(dict.fromkeys(col for cols in extra.values() for col in cols))
    table = Table(title=title)
    for column in ["suspect", "method", "setting", *extra_columns, "statistic", "panel", "effect", "p-value",
                   "samples", "queries", "decision"]:
        table.add_column(column, justify="left" if column in ("suspect", "method", "setting", "panel", "decision")
                         else "right")
    for v in verdicts:
        cells = extra.get(v.suspect, {})
        panel = "-" if not v.panel else f"{v.panel['mean']:.3f}±{v.panel['sd']:.3f} (K={v.panel['k']})"
        colour = {STOLEN: "bold red", NOT_STOLEN: "green", INCONCLUSIVE: "yellow"}[v.outcome]
        table.add_row(
            v.suspect,
            v.method,
            v.setting,
            *[cells.get(col, "") for col in extra_columns],
            _number(v.statistic, "{:.3f}"),
            panel,
            "-" if v.effect is None else f"{v.effect_name}={v.effect:+.3f}",
            format_p(v.p_value),
            str(v.samples),
            "-" if v.queries is None else str(v.queries),
            f"[{colour}]{v.decision}[/]",
        )
    return table
