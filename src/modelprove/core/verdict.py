"""The one verdict type: every method's answer reads alike, prints as a table, saves as JSON."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from modelprove.core.fileio import atomic_write_json


@dataclass
class Verdict:
    """Is ``suspect`` derived from the protected model?

    ``stolen`` is the decision at ``alpha`` (p < alpha); ``effect`` is the method's effect size
    (MOVE: delta_mu = mu_suspect - mu_benign) under the name ``effect_name``.
    """

    method: str
    setting: str
    suspect: str
    stolen: bool
    p_value: float
    alpha: float
    effect: float
    effect_name: str
    samples: int
    queries: int | None = None
    seconds: float = 0.0
    hashes: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def decision(self) -> str:
        return "STOLEN" if self.stolen else "not stolen"

    def to_dict(self) -> dict[str, Any]:
        record = asdict(self)
        record["decision"] = self.decision
        return record

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())


def format_p(p: float) -> str:
    if math.isnan(p):
        return "nan"
    if p == 0.0:
        return "0"
    if p < 1e-3:
        return f"{p:.1e}"
    return f"{p:.3f}"


def verdict_table(verdicts: list[Verdict], title: str = "Verdicts", extra: dict[str, dict[str, str]] | None = None):
    """A rich table of verdicts; ``extra`` maps suspect name -> additional columns (e.g. accuracy)."""
    from rich.table import Table

    extra = extra or {}
    extra_columns = list(dict.fromkeys(col for cols in extra.values() for col in cols))
    table = Table(title=title)
    for column in ["suspect", "method", "setting", *extra_columns, "effect", "p-value", "samples", "queries",
                   "decision"]:
        table.add_column(column, justify="left" if column in ("suspect", "method", "setting", "decision") else "right")
    for v in verdicts:
        cells = extra.get(v.suspect, {})
        table.add_row(
            v.suspect,
            v.method,
            v.setting,
            *[cells.get(col, "") for col in extra_columns],
            f"{v.effect_name}={v.effect:+.3f}",
            format_p(v.p_value),
            str(v.samples),
            "-" if v.queries is None else str(v.queries),
            f"[bold red]{v.decision}[/]" if v.stolen else f"[green]{v.decision}[/]",
        )
    return table
