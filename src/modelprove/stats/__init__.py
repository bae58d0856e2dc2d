"""Hypothesis tests shared by the methods."""

from modelprove.stats.tests import PairedTTest, paired_ttest_greater

__all__ = ["PairedTTest", "paired_ttest_greater"]
