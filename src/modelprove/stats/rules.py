"""Decision rules: evidence -> stolen / not stolen, with a p-value and an effect size.

The default is :class:`NullPanelRule`: the suspect's model-level statistic against the same statistic of
K honestly trained independent models (the null panel) on the same rows, with a one-sided prediction
interval, t = (T_S - mean) / (sd * sqrt(1 + 1/K)) on K - 1 degrees of freedom. Models are its unit of
replication, so a fixed offset between two honest models does not become "significant" as m grows, as
it does in the papers' tests over images against one reference model.

The papers' own tests stay available to reproduce their tables, named after the paper: MOVE's paired
t-test (Eq. 9, also the baselines' in MOVE's tables), Dataset Inference's Welch t-test, the exact
binomial test, and fixed thresholds (the blind watermark's T_acc, CAE's rho).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from scipy import stats

from modelprove.core.errors import ModelproveError
from modelprove.core.verdict import NOT_STOLEN, STOLEN
from modelprove.stats.evidence import Evidence, PanelStatistics
from modelprove.stats.scores import binomial_greater
from modelprove.stats.tests import paired_ttest_greater, welch_ttest_greater

MIN_PANEL = 3  # fewer honest models give no usable spread


@dataclass(frozen=True)
class Decision:
    """A rule's answer: the outcome, its p-value and effect, and the rule's own numbers."""

    outcome: str
    p_value: float | None
    effect: float | None
    effect_name: str
    reason: str
    details: dict[str, Any] = field(default_factory=dict)


class DecisionRule(Protocol):
    name: str
    uses_panel: bool

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision: ...


# -- the null panel's prediction interval --------------------------------------------------------------

def sd_floor(panel: PanelStatistics, m: int, binary: bool = False) -> float:
    """The smallest spread the panel may have: how much one model's statistic moves with the rows drawn.

    A panel whose models agree exactly (every honest model at key accuracy 0.10, say) would otherwise
    turn any suspect that differs at all into an accusation; a mean of m per-row scores cannot resolve
    model-to-model differences finer than its own standard error, within_sd / sqrt(m). For 0/1 scores
    the binomial standard error of the panel's rate is used, the rate kept at least 1/m from 0 and 1
    (a panel that never matched a key still cannot rule out a rate of about 1/m).
    """
    m = max(1, m)
    if binary:
        rate = min(max(float(np.mean(panel.statistics)), 1.0 / m), 1.0 - 1.0 / m) if m > 1 else 0.5
        return math.sqrt(rate * (1.0 - rate) / m)
    return panel.within_sd / math.sqrt(m)


@dataclass(frozen=True)
class PredictionTest:
    p_value: float
    t: float
    df: int
    mean: float
    sd: float
    sd_used: float
    rank: int  # panel models scoring at least the suspect's statistic

    @property
    def z(self) -> float:
        """(T - mean) / sd_used."""
        return self.t * math.sqrt(1 + 1 / (self.df + 1))


def prediction_interval_test(statistic: float, values: np.ndarray, floor: float = 0.0) -> PredictionTest:
    """One-sided test that ``statistic`` lies above the panel's prediction interval (DESIGN: the null panel).

    t = (T - mean) / (sd_used * sqrt(1 + 1/K)) on K - 1 degrees of freedom; sd_used is the panel's sample
    standard deviation, at least ``floor`` (:func:`sd_floor`).
    """
    values = np.asarray(values, dtype=np.float64).ravel()
    k = values.size
    if k < MIN_PANEL:
        raise ModelproveError(f"a null panel needs at least {MIN_PANEL} models, got {k}.")
    mean, sd = float(values.mean()), float(values.std(ddof=1))
    used = max(sd, floor)
    if used == 0.0:  # every honest model and the floor agree exactly: only an equal statistic is not above
        t = math.inf if statistic > mean else (0.0 if statistic == mean else -math.inf)
    else:
        t = (statistic - mean) / (used * math.sqrt(1.0 + 1.0 / k))
    return PredictionTest(float(stats.t.sf(t, df=k - 1)), float(t), k - 1, mean, sd, used,
                          int((values >= statistic).sum()))


def critical_value(panel: PanelStatistics, m: int, alpha: float, binary: bool = False) -> float:
    """The statistic above which :func:`panel_test` rejects at ``alpha``: the upper end of the panel's
    one-sided prediction interval, mean + t_{K-1}(1 - alpha) * sd_used * sqrt(1 + 1/K)."""
    values = np.asarray(panel.statistics, dtype=np.float64)
    if values.size < MIN_PANEL:
        raise ModelproveError(f"a null panel needs at least {MIN_PANEL} models, got {values.size}.")
    sd = max(float(values.std(ddof=1)), sd_floor(panel, m, binary))
    return float(values.mean()) + float(stats.t.isf(alpha, df=values.size - 1)) * sd * math.sqrt(1 + 1 / values.size)


def panel_test(statistic: float, panel: PanelStatistics, m: int, binary: bool = False) -> PredictionTest:
    """:func:`prediction_interval_test` of ``statistic`` against ``panel`` with its :func:`sd_floor`."""
    return prediction_interval_test(statistic, panel.statistics, sd_floor(panel, m, binary))


def false_accusation_rates(panel: PanelStatistics, alpha: float, m: int, binary: bool = False) -> dict[str, Any]:
    """How the rule treats honest models it has not seen, measured on the panel itself.

    leave-one-out: each panel model tested against the other K - 1; leave-one-recipe-out: every model of
    one recipe tested against the models of the other recipes (what predicts the rule's behaviour on an
    honest recipe the panel lacks). Rates are accused / tested; None when too few models remain.
    """
    values = np.asarray(panel.statistics, dtype=np.float64)
    recipes = np.asarray(panel.recipes)
    floor = sd_floor(panel, m, binary)

    def accused(index: np.ndarray, rest: np.ndarray) -> list[bool]:
        return [prediction_interval_test(values[i], values[rest], floor).p_value < alpha for i in index]

    loo: list[bool] = []
    if panel.k - 1 >= MIN_PANEL:
        for i in range(panel.k):
            loo += accused(np.array([i]), np.delete(np.arange(panel.k), i))
    loro: list[bool] = []
    by_recipe: dict[str, float] = {}
    for recipe in dict.fromkeys(panel.recipes):
        inside, outside = np.flatnonzero(recipes == recipe), np.flatnonzero(recipes != recipe)
        if outside.size >= MIN_PANEL:
            flags = accused(inside, outside)
            loro += flags
            by_recipe[str(recipe)] = sum(flags) / len(flags)
    return {"alpha": alpha,
            "leave_one_out": sum(loo) / len(loo) if loo else None, "leave_one_out_tested": len(loo),
            "leave_one_recipe_out": sum(loro) / len(loro) if loro else None, "leave_one_recipe_out_tested": len(loro),
            "by_recipe": by_recipe}


@dataclass(frozen=True)
class NullPanelRule:
    """The default rule: is the suspect's statistic above the honest models' prediction interval?"""

    name: str = "null-panel prediction interval"
    uses_panel: bool = True

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        if panel is None:
            raise ModelproveError("the null-panel rule needs a panel.")
        test = panel_test(evidence.statistic, panel, evidence.m, evidence.binary)
        stolen = test.p_value < alpha
        where = "above" if stolen else "within"
        return Decision(
            STOLEN if stolen else NOT_STOLEN, test.p_value, test.z, "panel_z",
            f"its {evidence.statistic_name} {evidence.statistic:.3f} is {where} what {panel.k} honest "
            f"{panel.architecture} models reach ({test.mean:.3f} ± {test.sd:.3f}; p {_p(test.p_value)} at alpha {alpha}).",
            {"t": test.t, "df": test.df, "panel_mean": test.mean, "panel_sd": test.sd, "panel_sd_used": test.sd_used,
             "rank": test.rank},
        )


# -- the papers' own tests --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PairedTTestRule:
    """MOVE's one-sided paired t-test of H0: mu_suspect <= mu_reference + margin (Sec. 5.4, Eq. 9)."""

    name: str = "paper: one-sided paired t-test (MOVE Eq. 9)"
    margin: float = 0.0
    uses_panel: bool = False

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        suspect, reference = _paired(evidence, self.name)
        test = paired_ttest_greater(suspect, reference, margin=self.margin)
        stolen = test.p_value < alpha
        return Decision(STOLEN if stolen else NOT_STOLEN, test.p_value, test.delta_mu, "delta_mu",
                        f"delta_mu {test.delta_mu:+.3f} against {evidence.reference_name}: p {_p(test.p_value)} "
                        f"{'<' if stolen else '>='} alpha {alpha} ({self.name}).",
                        {"t_statistic": test.statistic, "degenerate": test.degenerate, "margin": self.margin,
                         "mu_suspect": float(np.mean(suspect)), "mu_reference": float(np.mean(reference))})


@dataclass(frozen=True)
class WelchTTestRule:
    """Dataset Inference's one-sided Welch t-test of mean(private) > mean(public) (Maini et al. 2021)."""

    name: str = "paper: one-sided Welch t-test (Dataset Inference)"
    uses_panel: bool = False

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        a, b = _paired(evidence, self.name)
        test = welch_ttest_greater(a, b)
        stolen = test.p_value < alpha
        return Decision(STOLEN if stolen else NOT_STOLEN, test.p_value, test.delta_mu, "delta_mu",
                        f"delta_mu {test.delta_mu:+.3f} ({evidence.reference_name}): p {_p(test.p_value)} "
                        f"{'<' if stolen else '>='} alpha {alpha} ({self.name}).",
                        {"t_statistic": test.statistic, "degenerate": test.degenerate})


@dataclass(frozen=True)
class ThresholdRule:
    """A paper's fixed threshold on the statistic (blind watermark: key accuracy > T_acc; CAE: CAEAcc > rho).

    ``chance`` (optional) adds the exact binomial test of the per-row successes against it: with
    ``require_binomial`` the suspect must also be significant at alpha (CAE and IPGuard here).
    """

    threshold: float
    name: str = "paper: statistic > threshold"
    chance: float | None = None
    require_binomial: bool = False
    uses_panel: bool = False

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        above = evidence.statistic > self.threshold
        p = None
        details: dict[str, Any] = {"threshold": self.threshold}
        if self.chance is not None:
            successes = int(round(float(evidence.scores.sum())))
            test = binomial_greater(successes, evidence.m, self.chance)
            p = test.p_value
            details.update(successes=successes, chance=self.chance, binomial_p_value=p)
        stolen = above and (not self.require_binomial or (p is not None and p < alpha))
        return Decision(STOLEN if stolen else NOT_STOLEN, p, evidence.statistic, evidence.statistic_name.replace(" ", "_"),
                        f"its {evidence.statistic_name} {evidence.statistic:.3f} is "
                        f"{'above' if above else 'not above'} the threshold {self.threshold:.3f}"
                        + (f", binomial p {_p(p)} against chance {self.chance:.3f}" if p is not None else "")
                        + f" ({self.name}).", details)


@dataclass(frozen=True)
class BinomialRule:
    """The exact one-sided binomial test of the per-row successes against a chance rate."""

    chance: float
    name: str = "exact binomial test"
    uses_panel: bool = False

    def decide(self, evidence: Evidence, alpha: float, panel: PanelStatistics | None = None) -> Decision:
        successes = int(round(float(evidence.scores.sum())))
        test = binomial_greater(successes, evidence.m, self.chance)
        stolen = test.p_value < alpha
        return Decision(STOLEN if stolen else NOT_STOLEN, test.p_value, test.rate, "rate",
                        f"{successes} of {evidence.m} against chance {self.chance:.3f}: p {_p(test.p_value)} ({self.name}).",
                        {"successes": successes, "chance": self.chance})


def _paired(evidence: Evidence, rule: str) -> tuple[np.ndarray, np.ndarray]:
    if evidence.paired is None:
        raise ModelproveError(f"{evidence.method} gives no paired samples for the rule {rule!r}.",
                              fix="use the default rule (rule=panel).")
    return evidence.paired


def _p(p: float | None) -> str:
    if p is None:
        return "-"
    return f"{p:.1e}" if p < 1e-3 else f"{p:.3f}"


RULE_NAMES = ("panel", "paper")
