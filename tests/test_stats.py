import numpy as np
import pytest
from scipy import stats

from modelprove.core.errors import ModelproveError
from modelprove.stats import paired_ttest_greater


def test_matches_scipy_one_sided_paired():
    rng = np.random.default_rng(0)
    benign = rng.uniform(0, 0.3, size=10)
    suspect = benign + rng.normal(0.2, 0.1, size=10)
    result = paired_ttest_greater(suspect, benign)
    expected = stats.ttest_rel(suspect, benign, alternative="greater")
    assert result.p_value == pytest.approx(expected.pvalue)
    assert result.delta_mu == pytest.approx(np.mean(suspect - benign))
    assert not result.degenerate


def test_hand_computed_t_statistic():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt(3)) = 3.4641; one-sided p from t(2)
    suspect, benign = np.array([1.0, 2.0, 3.0]), np.zeros(3)
    result = paired_ttest_greater(suspect, benign)
    assert result.statistic == pytest.approx(2 * np.sqrt(3))
    assert result.p_value == pytest.approx(stats.t.sf(2 * np.sqrt(3), df=2))
    assert result.p_value == pytest.approx(0.03709, abs=1e-4)


def test_direction_is_one_sided():
    rng = np.random.default_rng(1)
    benign = rng.uniform(0.5, 1.0, size=20)
    lower = benign - 0.3 + rng.normal(0, 0.05, size=20)
    assert paired_ttest_greater(lower, benign).p_value > 0.99
    assert paired_ttest_greater(benign, lower).p_value < 1e-6


def test_equal_samples_are_never_flagged():
    x = np.linspace(0, 1, 10)
    result = paired_ttest_greater(x, x)
    assert result.p_value == 1.0 and result.delta_mu == 0.0 and result.degenerate


def test_constant_positive_difference_is_the_limit_p_zero():
    result = paired_ttest_greater(np.ones(10), np.zeros(10))
    assert result.p_value == 0.0 and result.delta_mu == 1.0 and result.degenerate


@pytest.mark.parametrize(
    "suspect, benign",
    [(np.ones(3), np.ones(4)), (np.ones(1), np.ones(1)), (np.array([np.nan, 1.0]), np.ones(2))],
)
def test_rejects_bad_samples(suspect, benign):
    with pytest.raises(ModelproveError):
        paired_ttest_greater(suspect, benign)


def test_binomial_greater_hand_computed():
    # 3 of 3 at chance 1/2: P(X >= 3) = 1/8; 0 of 3: P(X >= 0) = 1
    from modelprove.stats import binomial_greater

    assert binomial_greater(3, 3, 0.5).p_value == pytest.approx(0.125)
    assert binomial_greater(0, 3, 0.5).p_value == pytest.approx(1.0)
    # 2 of 4 at chance 0.1: 1 - P(0) - P(1) = 1 - 0.9^4 - 4 * 0.1 * 0.9^3 = 0.0523
    result = binomial_greater(2, 4, 0.1)
    assert result.p_value == pytest.approx(1 - 0.9**4 - 4 * 0.1 * 0.9**3)
    assert result.rate == 0.5


@pytest.mark.parametrize("args", [(1, 0, 0.5), (5, 4, 0.5), (-1, 4, 0.5), (1, 4, 0.0), (1, 4, 1.0)])
def test_binomial_greater_refuses_bad_input(args):
    from modelprove.stats import binomial_greater

    with pytest.raises(ModelproveError):
        binomial_greater(*args)


def test_roc_auc_hand_computed():
    from modelprove.stats import roc_auc

    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0
    assert roc_auc([0.1], [0.9]) == 0.0
    # pairs (pos, neg): (0.5, 0.5) tie = 1/2, (0.5, 0.1) = 1, (0.9, 0.5) = 1, (0.9, 0.1) = 1 -> 3.5 / 4
    assert roc_auc([0.5, 0.9], [0.5, 0.1]) == pytest.approx(0.875)
    with pytest.raises(ModelproveError):
        roc_auc([], [0.1])



def test_roc_auc_ci_brackets_the_auc_and_narrows_with_more_models():
    import numpy as np

    from modelprove.stats import roc_auc, roc_auc_ci

    separated = roc_auc_ci([0.9, 0.8, 0.95], [0.1, 0.2])
    assert (separated.auc, separated.low, separated.high) == (1.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    few = roc_auc_ci(rng.normal(1, 1, 10), rng.normal(0, 1, 10))
    many = roc_auc_ci(rng.normal(1, 1, 200), rng.normal(0, 1, 200))
    for ci in (few, many):
        assert ci.low <= ci.auc <= ci.high and ci.level == 0.95
    assert many.high - many.low < (few.high - few.low) / 2
    assert many.low < 0.76 < many.high  # P(N(1,1) > N(0,1)) = Phi(1/sqrt 2) = 0.760
    assert roc_auc_ci([0.3, 0.7], [0.5, 0.1], seed=3) == roc_auc_ci([0.3, 0.7], [0.5, 0.1], seed=3)
    assert roc_auc_ci([0.3, 0.7], [0.5, 0.1]).auc == roc_auc([0.3, 0.7], [0.5, 0.1])

def test_margin_shifts_the_null_hypothesis():
    # differences 0.1, 0.2, 0.3 (mean 0.2): significant against 0, not against a margin of 0.25;
    # against margin 0.1 the t statistic is (0.2 - 0.1) / (0.1 / sqrt(3))
    suspect, benign = np.array([0.1, 0.2, 0.3]), np.zeros(3)
    assert paired_ttest_greater(suspect, benign).p_value < 0.05
    shifted = paired_ttest_greater(suspect, benign, margin=0.1)
    assert shifted.statistic == pytest.approx(np.sqrt(3))
    assert shifted.delta_mu == pytest.approx(0.2)
    assert paired_ttest_greater(suspect, benign, margin=0.25).p_value > 0.5
    # identical differences: decided by the sign of delta_mu - margin
    assert paired_ttest_greater(np.full(3, 0.2), np.zeros(3), margin=0.3).p_value == 1.0
