"""What a method hands to a decision rule: its evidence about one suspect, and the references to judge it by.

A method measures per-row scores of the suspect on rows of a pool (MOVE: C's output on m transformed
images; a watermark: 1 where a key sample gets its target label; CAE: 1 where a fingerprint example
gets its target); their mean is the **model-level statistic**. A decision rule compares that statistic
with the same statistic of a **null panel** of honest models on the same rows, or runs the paper's own
test on the per-sample values (the paired arrays).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelprove.core.errors import ModelproveError, SuspectError


@dataclass
class Evidence:
    """One suspect's evidence from one method in one setting.

    ``variant`` names which stored panel scores are comparable (the same pool, features and meta-
    classifier); ``rows`` are the pool rows that were scored, so a rule compares the suspect with the
    panel on exactly those rows. ``paired`` holds the paper test's two samples (suspect, reference):
    MOVE's p_S and p_B, a trigger's triggered and benign target probabilities, DI's private and public
    scores.
    """

    method: str
    setting: str
    variant: str
    statistic_name: str
    scores: np.ndarray
    rows: np.ndarray
    score_range: tuple[float, float] = (0.0, 1.0)
    binary: bool = False  # per-row scores are 0/1 (a key sample or fingerprint example matched or not)
    paired: tuple[np.ndarray, np.ndarray] | None = None
    reference_name: str | None = None
    queries: int | None = None
    suspect_arch: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64).ravel()
        self.rows = np.asarray(self.rows, dtype=np.int64).ravel()
        if self.scores.size == 0 or self.scores.shape != self.rows.shape:
            raise ModelproveError(f"evidence needs one score per row, got {self.scores.size} scores for "
                                  f"{self.rows.size} rows.")
        if not np.isfinite(self.scores).all():
            raise SuspectError(f"the suspect's {self.statistic_name} scores are not finite (NaN or inf): its "
                               "outputs or gradients overflowed.", fix="check the suspect's normalisation and weights.")

    @property
    def statistic(self) -> float:
        return float(self.scores.mean())

    @property
    def m(self) -> int:
        return int(self.scores.size)


@dataclass(frozen=True)
class PanelStatistics:
    """The null panel of one architecture, scored on the evidence's rows: one statistic per honest model,
    and ``within_sd``, the mean over its models of the spread of their per-row scores on those rows."""

    architecture: str
    statistics: np.ndarray
    recipes: tuple[str, ...]
    names: tuple[str, ...]
    within_sd: float = 0.0

    def __post_init__(self) -> None:
        if len(self.statistics) != len(self.recipes) or len(self.statistics) != len(self.names):
            raise ModelproveError("a panel needs one recipe and one name per statistic.")

    @property
    def k(self) -> int:
        return int(len(self.statistics))


@dataclass(frozen=True)
class Competence:
    """Is the suspect a competent model of the task? Its top-1 accuracy on held-out clean images.

    An untrained network or a constant-output model sits near ``chance`` (the largest class share of
    the images); a meta-classifier or fingerprint scores such a model arbitrarily, so no verdict may
    rest on it.
    """

    accuracy: float
    chance: float
    threshold: float
    images: int
    queries: int | None = None
    # Set when a sequential test decided it on fewer images (stats.sequential): its answer, and how.
    decided: bool | None = None
    sequential: dict[str, Any] | None = None

    @property
    def competent(self) -> bool:
        return self.decided if self.decided is not None else self.accuracy >= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "chance": self.chance, "threshold": self.threshold,
                "images": self.images, "queries": self.queries, "competent": self.competent,
                **({"sequential": self.sequential} if self.sequential else {})}


MIN_ABOVE_CHANCE = 0.05


def competence_threshold(victim_accuracy: float, chance: float, fraction: float) -> float:
    """The accuracy a competent suspect reaches: ``fraction`` of the way from chance to the victim's, and
    always at least MIN_ABOVE_CHANCE above chance, so a constant answer (which scores exactly the largest
    class share, chance) is never competent, even beside a victim that is itself near chance."""
    return chance + max(fraction * max(0.0, victim_accuracy - chance), MIN_ABOVE_CHANCE)
