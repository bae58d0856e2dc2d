"""Hypothesis tests and scores shared by the methods."""

from modelprove.stats.scores import BinomialTest, binomial_greater, roc_auc
from modelprove.stats.tests import PairedTTest, paired_ttest_greater

__all__ = ["BinomialTest", "PairedTTest", "binomial_greater", "paired_ttest_greater", "roc_auc"]
