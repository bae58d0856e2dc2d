"""Hypothesis tests: MOVE's one-sided paired t-test (MOVE Sec. 5.4, Eq. 9)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from modelprove.core.errors import ModelproveError


@dataclass(frozen=True)
class PairedTTest:
    """H0: mu_suspect <= mu_benign against H1: mu_suspect > mu_benign, on paired samples."""

    p_value: float
    delta_mu: float
    statistic: float
    samples: int
    degenerate: bool  # every paired difference was the same number: the t statistic is undefined


def paired_ttest_greater(suspect: np.ndarray, benign: np.ndarray, margin: float = 0.0) -> PairedTTest:
    """One-sided paired t-test of ``suspect`` > ``benign`` + ``margin`` (scipy.stats.ttest_rel).

    With ``margin`` > 0 the null hypothesis is mean(suspect - benign) <= margin; ``delta_mu`` is still
    the plain mean difference.

    When all differences are identical the variance is zero and scipy returns NaN; the limit of the
    test is then p = 0 for a positive difference and p = 1 otherwise, reported with ``degenerate``.
    """
    suspect = np.asarray(suspect, dtype=np.float64).ravel()
    benign = np.asarray(benign, dtype=np.float64).ravel()
    if suspect.shape != benign.shape:
        raise ModelproveError(f"a paired t-test needs equal-length samples, got {suspect.size} and {benign.size}.")
    if suspect.size < 2:
        raise ModelproveError(f"a paired t-test needs at least 2 pairs, got {suspect.size}.")
    if not (np.isfinite(suspect).all() and np.isfinite(benign).all()):
        raise ModelproveError("a paired t-test got non-finite values (NaN or inf).")
    differences = suspect - benign
    delta_mu = float(differences.mean())
    if np.ptp(differences) == 0.0:
        return PairedTTest(
            p_value=0.0 if delta_mu > margin else 1.0,
            delta_mu=delta_mu,
            statistic=float("inf") if delta_mu > margin else float("nan"),
            samples=int(suspect.size),
            degenerate=True,
        )
    result = stats.ttest_rel(suspect - margin, benign, alternative="greater")
    return PairedTTest(
        p_value=float(result.pvalue),
        delta_mu=delta_mu,
        statistic=float(result.statistic),
        samples=int(suspect.size),
        degenerate=False,
    )
