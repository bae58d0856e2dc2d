"""Tests and scores for methods whose evidence is a count or a score, not paired samples.

CAE fingerprinting (CAEAcc) and key-sample watermarks (key accuracy) report how many of n queries a
suspect answered with the expected label; :func:`binomial_greater` turns that into a p-value against a
chance rate, so every method's verdict carries one. :func:`roc_auc` scores how well a statistic
separates stolen from independent models (CAE Sec. 5, blind-watermark detector studies).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from modelprove.core.errors import ModelproveError


@dataclass(frozen=True)
class BinomialTest:
    """H0: each of ``trials`` answers matches with probability ``chance``; H1: more often."""

    p_value: float
    successes: int
    trials: int
    rate: float
    chance: float


def binomial_greater(successes: int, trials: int, chance: float) -> BinomialTest:
    """Exact one-sided binomial test (scipy.stats.binomtest) of ``successes`` out of ``trials`` > ``chance``."""
    if trials < 1:
        raise ModelproveError(f"a binomial test needs at least 1 trial, got {trials}.")
    if not 0 <= successes <= trials:
        raise ModelproveError(f"successes must be in 0..{trials}, got {successes}.")
    if not 0.0 < chance < 1.0:
        raise ModelproveError(f"the chance rate must be strictly between 0 and 1, got {chance}.")
    result = stats.binomtest(int(successes), int(trials), float(chance), alternative="greater")
    return BinomialTest(float(result.pvalue), int(successes), int(trials), successes / trials, float(chance))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores where ``positive`` should score higher than ``negative``.

    Equal to P(score of a random positive > score of a random negative), ties counting one half
    (sklearn.metrics.roc_auc_score).
    """
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=np.float64).ravel()
    negative = np.asarray(negative, dtype=np.float64).ravel()
    if positive.size == 0 or negative.size == 0:
        raise ModelproveError(f"ROC AUC needs both classes, got {positive.size} positive and {negative.size} negative scores.")
    if not (np.isfinite(positive).all() and np.isfinite(negative).all()):
        raise ModelproveError("ROC AUC got non-finite scores (NaN or inf).")
    labels = np.concatenate([np.ones(positive.size), np.zeros(negative.size)])
    return float(roc_auc_score(labels, np.concatenate([positive, negative])))


@dataclass(frozen=True)
class AucInterval:
    """ROC AUC with a percentile bootstrap confidence interval."""

    auc: float
    low: float
    high: float
    positives: int
    negatives: int
    level: float


def roc_auc_ci(positive: np.ndarray, negative: np.ndarray, *, level: float = 0.95, resamples: int = 2000,
               seed: int = 0) -> AucInterval:
    """:func:`roc_auc` with a percentile bootstrap interval at ``level``: positives and negatives are
    resampled with replacement apart (stratified, so every resample has both), ``resamples`` times, seeded.
    The unit is whatever one score stands for (a model, or a model verified against one victim); scores
    that are not independent (one model against several victims) make the interval too narrow."""
    positive = np.asarray(positive, dtype=np.float64).ravel()
    negative = np.asarray(negative, dtype=np.float64).ravel()
    auc = roc_auc(positive, negative)
    if not 0 < level < 1 or resamples < 1:
        raise ModelproveError(f"roc_auc_ci needs 0 < level < 1 and resamples >= 1, got {level}, {resamples}.")
    rng = np.random.default_rng(seed)
    pos = positive[rng.integers(0, positive.size, (resamples, positive.size))]
    neg = negative[rng.integers(0, negative.size, (resamples, negative.size))]
    # P(pos > neg) + P(pos = neg) / 2 per resample, over every pair at once (the sizes here are small).
    greater = (pos[:, :, None] > neg[:, None, :]).mean(axis=(1, 2))
    ties = (pos[:, :, None] == neg[:, None, :]).mean(axis=(1, 2))
    values = greater + ties / 2
    low, high = np.quantile(values, [(1 - level) / 2, (1 + level) / 2])
    return AucInterval(auc, float(low), float(high), int(positive.size), int(negative.size), level)
