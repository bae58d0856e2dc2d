"""Hypothesis tests: MOVE's one-sided paired t-test (MOVE Sec. 5.4, Eq. 9) and Dataset Inference's
one-sided Welch t-test (Maini et al. 2021, Sec. 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

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


class WelchTTest(NamedTuple):
    """H0: mu_a <= mu_b against H1: mu_a > mu_b, on two independent samples."""

    p_value: float
    delta_mu: float
    statistic: float
    degenerate: bool  # neither sample varies: the t statistic is undefined


def welch_ttest_greater(a: np.ndarray, b: np.ndarray) -> WelchTTest:
    """One-sided Welch t-test of mean(a) > mean(b) (scipy.stats.ttest_ind, equal_var=False).

    With no variance in either sample the limit is used: p = 0 when delta_mu > 0, else 1.
    """
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.size < 2 or b.size < 2:
        raise ModelproveError(f"a Welch t-test needs at least 2 values per sample, got {a.size} and {b.size}.")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ModelproveError("a Welch t-test got non-finite values (NaN or inf).")
    delta_mu = float(a.mean() - b.mean())
    if np.ptp(a) == 0.0 and np.ptp(b) == 0.0:
        return WelchTTest((0.0 if delta_mu > 0 else 1.0), delta_mu, float("nan"), True)
    result = stats.ttest_ind(a, b, equal_var=False, alternative="greater")
    return WelchTTest(float(result.pvalue), delta_mu, float(result.statistic), False)
