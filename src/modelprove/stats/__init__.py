"""Decision rules and the tests and scores behind them; the one function that builds every Verdict."""

from modelprove.stats.evidence import Competence, Evidence, PanelStatistics, competence_threshold
from modelprove.stats.rules import (
    BinomialRule, Decision, DecisionRule, NullPanelRule, PairedTTestRule, ThresholdRule, WelchTTestRule,
    false_accusation_rates, prediction_interval_test, sd_floor,
)
from modelprove.stats.scores import AucInterval, BinomialTest, binomial_greater, roc_auc, roc_auc_ci
from modelprove.stats.tests import PairedTTest, WelchTTest, paired_ttest_greater, welch_ttest_greater
from modelprove.stats.verdicts import Calibration, Provenance, build_verdict

__all__ = [
    "AucInterval", "BinomialRule", "BinomialTest", "Calibration", "Competence", "Decision", "DecisionRule", "Evidence",
    "NullPanelRule", "PairedTTest", "PairedTTestRule", "PanelStatistics", "Provenance", "ThresholdRule",
    "WelchTTest", "WelchTTestRule", "binomial_greater", "build_verdict", "competence_threshold",
    "false_accusation_rates", "paired_ttest_greater", "prediction_interval_test", "roc_auc", "roc_auc_ci", "sd_floor",
    "welch_ttest_greater",
]
