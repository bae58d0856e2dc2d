"""Anytime-valid sequential test of a bounded mean over a finite pool, sampled without replacement.

The question every fixed-m test of the methods answers — is the mean per-sample score of the suspect
(or of a paired difference) above a threshold c? — asked one small batch at a time, stopping as soon
as the answer is certain at alpha. This is what saves queries against a paying, watchful API.

The test is the betting construction of Waudby-Smith & Ramdas, "Estimating means of bounded random
variables by betting" (JRSS-B 2023), in its sampling-without-replacement form ("Confidence sequences
for sampling without replacement", NeurIPS 2020):

- scores lie in known bounds [lower, upper] and are rescaled to y in [0, 1];
- to test H0: pool mean <= c, a bettor starts with capital 1 and at draw t stakes a fraction
  lambda_t >= 0, chosen from the draws before t only (predictable), on y_t exceeding the mean of the
  pool's *remaining* values under H0, m_t(c) = (N c - sum of earlier draws) / (N - t + 1):
  K_t = prod (1 + lambda_i (y_i - m_i(c))). Under uniform sampling without replacement,
  E[y_t | past] is exactly the remaining mean, so K_t is a nonnegative martingale when the pool
  mean is c, and a supermartingale when it is below c (m_i grows with c, and lambda_i >= 0);
- Ville's inequality gives P(sup_t K_t >= 1/alpha) <= alpha under H0, at every stopping time at
  once: looking after every batch and stopping early costs nothing, unlike a t-test repeated after
  every batch (which tests/test_sequential.py shows exceeding alpha);
- the mirror bettor (stakes on y_t falling short) tests H0': pool mean >= c'.

lambda_t is the aGRAPA rule of the 2023 paper (growth-rate adaptive: (mu - m) / (sigma^2 + (mu - m)^2)
from the running mean and variance), truncated to ``truncation`` of the largest stake that keeps the
capital nonnegative for every possible score. The confidence sequence reported alongside is the set
of means that neither bettor has rejected, intersected over time and with the pool's deterministic
bounds (what the draws so far already prove about the pool mean).

With a pool of N and no replacement the evidence is about the pool itself (the verification pool a
protection holds), which is the quantity the fixed-m tests estimate from a random m of it; without
``pool_size`` the draws are taken as independent (an infinite pool) and m_t(c) = c.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelprove.core.errors import ModelproveError

ABOVE, BELOW, UNDECIDED = "above", "below", "undecided"
RULE = "betting confidence sequence, sampling without replacement (Waudby-Smith & Ramdas 2020, 2023)"


@dataclass(frozen=True)
class SequentialResult:
    """The outcome of :func:`sequential_mean_test`.

    ``decision`` is "above" (the pool mean is above ``threshold``, at ``alpha``), "below" (it is
    below ``below_threshold``, at ``alpha``) or "undecided" (pool or budget exhausted first).
    ``p_above`` is the anytime-valid p-value of H0: pool mean <= threshold (1 / the largest capital
    the bettor reached), ``p_below`` that of H0': pool mean >= below_threshold. ``cs_lower`` and
    ``cs_upper`` bound the pool mean (a confidence sequence at level 1 - 2 alpha, running
    intersection); ``history`` has one entry per batch.
    """

    decision: str
    samples: int
    mean: float
    cs_lower: float
    cs_upper: float
    p_above: float
    p_below: float
    threshold: float
    below_threshold: float
    alpha: float
    scores: np.ndarray
    history: list[dict] = field(default_factory=list)


class BettingTest:
    """The two bettors of the module docstring for a set of candidate means, updated draw by draw.

    ``means`` are candidate pool means in [0, 1] (rescaled); ``pool_size`` None is an infinite pool.
    """

    def __init__(self, means: np.ndarray, *, pool_size: int | None, truncation: float):
        if not 0.0 < truncation < 1.0:
            raise ModelproveError(f"the betting truncation must be in (0, 1), got {truncation}.")
        self.means = np.asarray(means, dtype=np.float64)
        self.pool_size = pool_size
        self.truncation = truncation
        self.log_up = np.zeros_like(self.means)  # log capital of the bettor on "mean > m"
        self.log_down = np.zeros_like(self.means)  # ... on "mean < m"
        self.impossible_up = np.zeros(self.means.shape, bool)  # the draws already prove mean > m
        self.impossible_down = np.zeros(self.means.shape, bool)  # ... mean < m
        self.count = 0
        self.total = 0.0
        self.squares = 0.0  # sum of (y_i - mu_hat_{i-1})^2, for the running variance

    def _mu_sigma(self) -> tuple[float, float]:
        # Regularised running estimates (one pseudo-observation at 1/2 with variance 1/4).
        mu = (0.5 + self.total) / (self.count + 1)
        return mu, (0.25 + self.squares) / (self.count + 1)

    def update(self, y: float) -> None:
        """Bet on one draw ``y`` in [0, 1] (stakes chosen from the earlier draws only)."""
        mu, var = self._mu_sigma()
        if self.pool_size is None:
            remaining = self.means
        else:
            left = self.pool_size - self.count  # values not yet drawn, this one included
            if left <= 0:
                raise ModelproveError(f"more draws than the pool of {self.pool_size} holds.")
            remaining = (self.pool_size * self.means - self.total) / left
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = mu - remaining
            grapa = gap / (var + gap**2)
            up = np.clip(grapa, 0.0, None)
            down = np.clip(-grapa, 0.0, None)
            # Largest stakes that keep 1 + lam (y - r) >= 0 for every y in [0, 1].
            up = np.minimum(up, np.where(remaining > 0, self.truncation / remaining, np.inf))
            down = np.minimum(down, np.where(remaining < 1, self.truncation / (1 - remaining), np.inf))
        valid = (remaining > 0) & (remaining < 1)
        self.log_up = np.where(valid, self.log_up + np.log1p(np.where(valid, up * (y - remaining), 0.0)),
                               self.log_up)
        self.log_down = np.where(valid, self.log_down + np.log1p(np.where(valid, -down * (y - remaining), 0.0)),
                                 self.log_down)
        self.squares += (y - mu) ** 2
        self.count += 1
        self.total += y
        if self.pool_size is not None:  # what the draws prove whatever the rest of the pool holds
            n, size = self.count, self.pool_size
            slack = 1e-9  # a summation's rounding is no proof
            self.impossible_up |= self.total / size > self.means + slack
            self.impossible_down |= (self.total + (size - n)) / size < self.means - slack

    def rejects_up(self, alpha: float) -> np.ndarray:
        """Means m for which H0: pool mean <= m is rejected at ``alpha``."""
        return self.impossible_up | (self.log_up >= math.log(1 / alpha))

    def rejects_down(self, alpha: float) -> np.ndarray:
        """Means m for which H0: pool mean >= m is rejected at ``alpha``."""
        return self.impossible_down | (self.log_down >= math.log(1 / alpha))


def sequential_mean_test(
    next_scores: Callable[[int], np.ndarray],
    threshold: float,
    *,
    lower: float,
    upper: float,
    alpha: float,
    batch: int,
    max_samples: int,
    pool_size: int | None = None,
    below: float | None = None,
    truncation: float = 0.9,
    cs_points: int = 201,
) -> SequentialResult:
    """Draw scores ``batch`` at a time until the pool mean is known to be above ``threshold`` or
    below ``below`` (default: ``threshold``) at ``alpha`` each, or ``max_samples`` are drawn.

    ``next_scores(n)`` returns the next n scores of a uniformly random order of the pool (e.g. the
    rows of a seeded permutation, queried from the suspect); each must lie in [lower, upper].
    ``pool_size`` (N) enables the without-replacement correction: the draws must then be without
    replacement from a pool of N. ``below`` > ``threshold`` leaves an indifference zone between the
    two: a mean inside it may end undecided. The error guarantees: P(decision "above") <= alpha when
    the pool mean is <= threshold, and P("below") <= alpha when it is >= below, however the scores
    are distributed within the bounds. ``cs_points`` candidate means on [lower, upper] trace the
    confidence sequence (0: only the decision, e.g. in simulations; the bounds are then [lower, upper]).
    """
    below = threshold if below is None else below
    if not upper > lower:
        raise ModelproveError(f"the score bounds must satisfy lower < upper, got [{lower}, {upper}].")
    if not lower <= threshold <= below <= upper:
        raise ModelproveError(
            f"thresholds must satisfy lower <= threshold <= below <= upper; got lower={lower}, "
            f"threshold={threshold}, below={below}, upper={upper}."
        )
    if not 0.0 < alpha < 1.0:
        raise ModelproveError(f"alpha must be in (0, 1), got {alpha}.")
    if batch < 1 or max_samples < 1:
        raise ModelproveError(f"batch and max_samples must be >= 1, got batch={batch}, max_samples={max_samples}.")
    if pool_size is not None and max_samples > pool_size:
        raise ModelproveError(f"max_samples = {max_samples} exceeds the pool of {pool_size}.")

    span = upper - lower
    grid = np.linspace(0.0, 1.0, cs_points)
    c_up, c_down = (threshold - lower) / span, (below - lower) / span
    bettor = BettingTest(np.concatenate([[c_up, c_down], grid]), pool_size=pool_size, truncation=truncation)
    scores: list[float] = []
    history: list[dict] = []
    cs_low, cs_high = 0.0, 1.0
    best_up, best_down = 0.0, 0.0  # largest log capital reached at the thresholds
    decision = UNDECIDED
    while len(scores) < max_samples:
        want = min(batch, max_samples - len(scores))
        got = np.asarray(next_scores(want), dtype=np.float64).ravel()
        if got.shape != (want,):
            raise ModelproveError(f"next_scores({want}) returned {got.size} scores.")
        if not np.isfinite(got).all() or got.min() < lower - 1e-9 or got.max() > upper + 1e-9:
            raise ModelproveError(
                f"sequential scores must lie in [{lower}, {upper}]; got values in [{got.min():.4g}, {got.max():.4g}]."
            )
        for value in got:
            bettor.update(float(np.clip((value - lower) / span, 0.0, 1.0)))
        scores.extend(got.tolist())
        best_up, best_down = max(best_up, bettor.log_up[0]), max(best_down, bettor.log_down[1])
        up, down = bettor.rejects_up(alpha), bettor.rejects_down(alpha)
        inside = ~(up | down)[2:]
        if inside.any():  # the running intersection of the confidence sets (kept if the grid is too coarse)
            cs_low, cs_high = max(cs_low, grid[inside].min()), min(cs_high, grid[inside].max())
        history.append({"samples": len(scores), "mean": float(np.mean(scores)),
                        "cs_lower": lower + span * cs_low, "cs_upper": lower + span * cs_high,
                        "log_capital_above": float(bettor.log_up[0]),
                        "log_capital_below": float(bettor.log_down[1])})
        if up[0]:
            decision = ABOVE
            break
        if down[1]:
            decision = BELOW
            break
    return SequentialResult(
        decision=decision, samples=len(scores), mean=float(np.mean(scores)) if scores else float("nan"),
        cs_lower=lower + span * cs_low, cs_upper=lower + span * cs_high,
        p_above=0.0 if bettor.impossible_up[0] else min(1.0, math.exp(-best_up)),
        p_below=0.0 if bettor.impossible_down[1] else min(1.0, math.exp(-best_down)),
        threshold=threshold, below_threshold=below, alpha=alpha, scores=np.asarray(scores), history=history,
    )


def sequential_paired(
    next_pairs: Callable[[int], tuple[np.ndarray, np.ndarray]],
    *,
    score_range: tuple[float, float],
    margin: float,
    clear: float,
    alpha: float,
    batch: int,
    max_samples: int,
    pool_size: int | None,
    cs_points: int = 201,
) -> SequentialResult:
    """The paired question of the papers' tests (is mean(suspect - reference) above ``margin``?) asked
    ``batch`` pairs at a time: ``next_pairs(n)`` returns the next n (suspect, reference) scores, each in
    ``score_range``; stops "above" ``margin`` or "below" ``clear`` at ``alpha`` each."""
    low, high = score_range
    return sequential_mean_test(lambda n: np.subtract(*next_pairs(n)), margin, below=clear, lower=low - high,
                                upper=high - low, alpha=alpha, batch=batch, max_samples=max_samples,
                                pool_size=pool_size, cs_points=cs_points)


@dataclass(frozen=True)
class SequentialPairedRule:
    """A paper's paired test asked sequentially: the betting test at alpha/2 decided (``result``), or, when
    it ran out of rows undecided, the fixed-m ``fixed`` rule (e.g. MOVE's paired t-test) at alpha/2 on the
    rows drawn. By the union bound P(false accusation) <= alpha/2 + alpha/2; the p-value is the
    Bonferroni 2 x min of the two (so stolen iff p < alpha)."""

    fixed: Any  # a DecisionRule on paired evidence (stats.rules.PairedTTestRule)
    result: SequentialResult
    uses_panel: bool = False

    @property
    def name(self) -> str:
        return f"sequential: {RULE}, alpha/2; undecided -> {self.fixed.name} at alpha/2"

    def decide(self, evidence, alpha: float, panel=None):
        from modelprove.core.verdict import NOT_STOLEN, STOLEN
        from modelprove.stats.rules import Decision

        seq = self.result
        delta = float(np.mean(evidence.paired[0] - evidence.paired[1]))
        record = {"decided_by": "sequential" if seq.decision != UNDECIDED else "fixed-m test",
                  "sequential": {"decision": seq.decision, "samples": seq.samples, "margin": seq.threshold,
                                 "clear_below": seq.below_threshold, "alpha": seq.alpha, "p_above": seq.p_above,
                                 "p_below": seq.p_below, "cs_lower": seq.cs_lower, "cs_upper": seq.cs_upper,
                                 "steps": [h["samples"] for h in seq.history]}}
        if seq.decision == UNDECIDED:
            fixed = self.fixed.decide(evidence, alpha / 2)
            p_value = min(1.0, 2 * min(seq.p_above, fixed.p_value))
            outcome = fixed.outcome
            reason = (f"the sequential test was undecided after all {seq.samples} rows (delta_mu {delta:+.3f}, "
                      f"{seq.cs_lower:+.3f} to {seq.cs_upper:+.3f}); at alpha/2 = {alpha / 2:g}: {fixed.reason}")
            record.update(fixed.details, fixed_m_p_value=fixed.p_value)
        else:
            p_value = min(1.0, 2 * seq.p_above)
            outcome = STOLEN if seq.decision == ABOVE else NOT_STOLEN
            bound = (f"above {seq.threshold:g}" if seq.decision == ABOVE else f"below {seq.below_threshold:g}")
            reason = (f"delta_mu is {bound} at alpha/2 = {alpha / 2:g} after {seq.samples} rows (observed "
                      f"{delta:+.3f}; confidence sequence {seq.cs_lower:+.3f} to {seq.cs_upper:+.3f}), so "
                      f"{'the suspect carries the victim' + chr(39) + 's feature' if outcome == STOLEN else 'it is far less victim-like than a copy'}.")
        return Decision(outcome, p_value, delta, "delta_mu", reason, record)


@dataclass(frozen=True)
class SequentialPanelRule:
    """The null-panel rule asked sequentially (DESIGN: the null panel).

    The panel's statistics on the whole pool (stored at protect time) give a critical value c: the upper
    end of the honest models' one-sided prediction interval at alpha/4 (stats.rules; for a suspect of
    unknown architecture the largest over the architectures). The betting test asks, at alpha/4, whether
    the suspect's mean over the pool is above c (stolen) or below it (not stolen), a batch of rows at a
    time; when the rows run out undecided, the fixed null-panel rule decides at alpha/2 on the rows
    drawn. An honest suspect is accused only if its pool mean exceeds c (at most alpha/4, as a model of
    the panel's kind), or the betting test errs (alpha/4), or the fallback does (alpha/2): at most alpha.
    """

    fixed: Any  # stats.rules.NullPanelRule
    result: SequentialResult
    critical: float
    uses_panel: bool = True

    @property
    def name(self) -> str:
        return (f"sequential null panel: {RULE}, pool mean above the panel's alpha/4 prediction bound; "
                f"undecided -> {self.fixed.name} at alpha/2")

    def decide(self, evidence, alpha: float, panel=None):
        from modelprove.core.verdict import NOT_STOLEN, STOLEN
        from modelprove.stats.rules import Decision

        seq = self.result
        record = {"decided_by": "sequential" if seq.decision != UNDECIDED else "fixed-m test",
                  "sequential": {"decision": seq.decision, "samples": seq.samples, "critical_value": self.critical,
                                 "alpha": seq.alpha, "p_above": seq.p_above, "p_below": seq.p_below,
                                 "cs_lower": seq.cs_lower, "cs_upper": seq.cs_upper,
                                 "steps": [h["samples"] for h in seq.history]}}
        if seq.decision == UNDECIDED:
            fixed = self.fixed.decide(evidence, alpha / 2, panel)
            return Decision(fixed.outcome, min(1.0, 2 * fixed.p_value), fixed.effect, fixed.effect_name,
                            f"the sequential test was undecided after {seq.samples} rows; at alpha/2: {fixed.reason}",
                            {**fixed.details, **record})
        stolen = seq.decision == ABOVE
        where = "above" if stolen else "below"
        return Decision(STOLEN if stolen else NOT_STOLEN, min(1.0, 4 * seq.p_above), None, "panel_z",
                        f"its {evidence.statistic_name} over the whole pool is {where} {self.critical:.3f}, the "
                        f"upper end of what honest models reach (alpha/4), at alpha/4 after {seq.samples} rows "
                        f"(observed {evidence.statistic:.3f}; confidence sequence {seq.cs_lower:.3f} to "
                        f"{seq.cs_upper:.3f}).", record)


__all__ = ["ABOVE", "BELOW", "RULE", "UNDECIDED", "BettingTest", "SequentialPairedRule", "SequentialPanelRule",
           "SequentialResult", "sequential_mean_test", "sequential_paired"]
