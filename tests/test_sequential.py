"""The sequential tests' error guarantees, by simulation under H0 at its hardest, and their stopping.

Rates are counted over many seeded streams and compared with alpha through a binomial margin (the count
a test whose true rate is alpha exceeds with probability 1e-3), never as exact floats.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from modelprove.core.errors import ModelproveError
from modelprove.stats import Evidence, NullPanelRule, PairedTTestRule, PanelStatistics
from modelprove.stats.rules import critical_value
from modelprove.stats.sequential import (
    ABOVE, BELOW, CLEAR_ALPHA, SEQUENTIAL_SHARE, UNDECIDED, SequentialPairedRule, SequentialPanelRule,
    sequential_mean_test, sequential_paired, sequential_panel,
)

ALPHA = 0.1  # large enough that a rate above it is measurable with a few hundred runs


def most(runs: int, rate: float) -> int:
    """The most events a test whose true rate is ``rate`` shows in ``runs`` runs, but for 1e-3 of the time."""
    return int(stats.binom.ppf(1 - 1e-3, runs, rate))


def stream(values: np.ndarray):
    """next_scores over ``values`` in order."""
    drawn = [0]

    def next_scores(n: int) -> np.ndarray:
        out = values[drawn[0]:drawn[0] + n]
        drawn[0] += n
        return out

    return next_scores


def run(pool: np.ndarray, threshold: float, *, seed: int, max_samples: int, batch: int = 5, below: float | None = None,
        alpha: float = ALPHA, lower: float = -1.0, upper: float = 1.0, without_replacement: bool = True, **kw):
    """The test on one seeded random order of ``pool`` (or draws with replacement from it)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pool)) if without_replacement else rng.integers(0, len(pool), max_samples)
    return sequential_mean_test(stream(pool[order]), threshold, below=below, lower=lower, upper=upper, alpha=alpha,
                                batch=batch, max_samples=max_samples,
                                pool_size=len(pool) if without_replacement else None, cs_points=0, **kw)


def pools_at(mean: float, size: int, rng) -> dict[str, np.ndarray]:
    """Pools in [-1, 1] with mean (about) ``mean``, the thresholds being set to their exact means: the
    bounded distributions that are hardest for a test of the mean (two points at the bounds), skewed
    ones (rare values at the upper bound), and spread ones."""
    ones = round((mean + 1) / 2 * size)
    two_point = np.where(np.arange(size) < ones, 1.0, -1.0)
    rare = max(1, round(0.05 * size))
    skewed = np.where(np.arange(size) < rare, 1.0, (size * mean - rare) / (size - rare))
    width = 1 - abs(mean)
    return {"two points at the bounds": two_point, "rare large values": skewed,
            "uniform": rng.uniform(mean - width, mean + width, size)}


@pytest.mark.parametrize("without_replacement", [True, False])
def test_false_above_rate_stays_below_alpha_when_the_mean_is_the_threshold(without_replacement):
    rng = np.random.default_rng(0)
    runs = 200
    for name, pool in pools_at(0.0, 40, rng).items():
        decisions = [run(pool, float(pool.mean()), seed=k, max_samples=40 if without_replacement else 60,
                         without_replacement=without_replacement).decision for k in range(runs)]
        assert decisions.count(ABOVE) <= most(runs, ALPHA), f"{name}: 'above' {decisions.count(ABOVE)} of {runs}"


@pytest.mark.parametrize("prior", ["optimistic", "pessimistic"])
def test_kelly_stakes_primed_by_any_prior_keep_both_error_rates(prior):
    """The stored scores only choose the stakes: a prior that says the suspect is far above (or far below)
    the threshold when its pool sits exactly there makes the bettors stake hard, and still neither errs
    more often than its level. (below_alpha differs from alpha: each side keeps its own.)"""
    rng = np.random.default_rng(1)
    runs = 120
    for name, pool in list(pools_at(0.2, 30, rng).items())[:2]:  # the two hardest
        high, low = np.ones(50), -np.ones(50)
        priors = {"prior_above": high, "prior_below": low} if prior == "optimistic" else \
            {"prior_above": low, "prior_below": high}
        above = [run(pool, float(pool.mean()), seed=k, max_samples=30, alpha=ALPHA, **priors).decision
                 for k in range(runs)]
        assert above.count(ABOVE) <= most(runs, ALPHA), f"{name}: 'above' {above.count(ABOVE)} of {runs}"
        below = [run(pool, -0.5, below=float(pool.mean()), seed=k, max_samples=30, alpha=0.01, below_alpha=0.2,
                     **priors).decision for k in range(runs)]
        assert below.count(BELOW) <= most(runs, 0.2), f"{name}: 'below' {below.count(BELOW)} of {runs}"


def test_a_t_test_repeated_after_every_batch_does_exceed_alpha():
    """The same simulation catches a test that peeks: so the rates above are evidence, not a formality."""
    rng = np.random.default_rng(2)
    pool = pools_at(0.0, 500, rng)["uniform"]
    peeking, runs = 0, 200
    for k in range(runs):
        draws = pool[np.random.default_rng(k).permutation(len(pool))[:100]]
        peeking += any(stats.ttest_1samp(draws[:n], pool.mean(), alternative="greater").pvalue < ALPHA
                       for n in range(5, 101, 5))
    assert peeking > most(runs, ALPHA)


def test_a_clear_effect_stops_early_and_a_null_one_is_cleared_early():
    rng = np.random.default_rng(3)
    copies = np.clip(rng.normal(0.9, 0.1, 500), -1, 1)  # delta_mu of a copy: near 0.9 (move-fmnist: 0.93-0.97)
    stolen = run(copies, 0.0, below=0.3, seed=0, max_samples=100, alpha=0.005)
    assert stolen.decision == ABOVE and stolen.samples <= 20 and stolen.p_above <= 0.005
    assert stolen.cs_lower == -1.0  # cs_points=0: no confidence sequence traced
    independent = np.clip(rng.normal(0.0, 0.05, 500), -1, 1)
    cleared = run(independent, 0.0, below=0.3, seed=0, max_samples=100, alpha=0.005)
    assert cleared.decision == BELOW and cleared.samples <= 30 and cleared.p_above > 0.1
    unclear = run(np.clip(rng.normal(0.1, 0.3, 500), -1, 1), 0.0, below=0.3, seed=0, max_samples=10, alpha=0.005)
    assert unclear.decision == UNDECIDED and unclear.samples == 10


def test_confidence_sequence_covers_the_pool_mean_and_an_exhausted_pool_is_exact():
    rng = np.random.default_rng(4)
    pool = np.clip(rng.normal(0.2, 0.4, 40), -1, 1)
    result = sequential_mean_test(stream(pool), 0.9, below=0.95, lower=-1, upper=1, alpha=0.05, batch=8,
                                  max_samples=40, pool_size=40)
    assert result.decision == BELOW  # 0.2 is far below 0.95
    assert result.cs_lower <= pool.mean() <= result.cs_upper
    whole = sequential_mean_test(stream(pool), float(pool.mean()) - 1e-3, lower=-1, upper=1, alpha=0.05, batch=40,
                                 max_samples=40, pool_size=40)
    assert whole.decision == ABOVE and whole.p_above == 0.0 and whole.exhausted  # the whole pool seen: its mean is known


def test_bad_arguments_are_refused():
    with pytest.raises(ModelproveError, match="lower <= threshold <= below"):
        sequential_mean_test(lambda n: np.zeros(n), 0.5, below=0.2, lower=0, upper=1, alpha=0.1, batch=1, max_samples=5)
    with pytest.raises(ModelproveError, match="must lie in"):
        sequential_mean_test(lambda n: np.full(n, 2.0), 0.5, lower=0, upper=1, alpha=0.1, batch=1, max_samples=5)
    with pytest.raises(ModelproveError, match="exceeds the pool"):
        sequential_mean_test(lambda n: np.zeros(n), 0.5, lower=0, upper=1, alpha=0.1, batch=1, max_samples=5,
                             pool_size=3)
    with pytest.raises(ModelproveError, match="below_alpha"):
        sequential_mean_test(lambda n: np.zeros(n), 0.5, lower=0, upper=1, alpha=0.1, below_alpha=1.5, batch=1,
                             max_samples=5)


def panel_of(rows: np.ndarray) -> PanelStatistics:
    return PanelStatistics("cnn_small", rows.mean(axis=1), ("r",) * len(rows), tuple(map(str, range(len(rows)))),
                           within_sd=float(np.mean(rows.std(axis=1, ddof=1))))


def honest_world(rng, m: int, k: int = 8):
    """k + 1 honest models' per-row scores in [0, 1] on m rows: shared row difficulty (the panel's per-row
    scores are correlated, as MOVE's are), a model-level offset, and mostly-0 / sometimes-1 outputs; the
    last one is the suspect. Also the victim's rows (near 1)."""
    difficulty = rng.normal(0, 1, m)
    offsets = rng.normal(-1.5, 0.5, k + 1)
    scores = 1 / (1 + np.exp(-(offsets[:, None] + difficulty[None, :] + rng.normal(0, 1.5, (k + 1, m)))))
    victim = np.clip(rng.normal(0.95, 0.05, m), 0, 1)
    return scores[:k], scores[k], victim


def test_sequential_null_panel_rule_accuses_at_most_alpha_of_honest_suspects():
    """The whole sequential null-panel rule (OwnershipMethod.verify_rules with sequential=true): honest
    suspects drawn like the panel's models, the critical value at (1 - share) alpha on the rows, the betting
    test at share alpha primed by the victim's scores (the most aggressive prior for an honest suspect), and
    the exact decision when the rows run out (m = 24 rows: many do): stolen in at most alpha of them, with
    the outcome equal to p < alpha and, after all rows, to the fixed rule at (1 - share) alpha."""
    rng = np.random.default_rng(5)
    accused, exhausted, runs, m = 0, 0, 300, 24
    for _ in range(runs):
        panel_rows, suspect, victim = honest_world(rng, m)
        panel = panel_of(panel_rows)
        critical = critical_value(panel, m, (1 - SEQUENTIAL_SHARE) * ALPHA)
        result = sequential_panel(stream(suspect), critical=critical, victim=victim, panel=panel_rows,
                                  score_range=(0.0, 1.0), alpha=ALPHA, batch=2, cs_points=0)
        rows = np.arange(result.samples)
        evidence = Evidence("move", "black-box", "black-box/train", "mean", suspect[:result.samples], rows)
        decision = SequentialPanelRule(NullPanelRule(), result, critical).decide(evidence, ALPHA, panel)
        accused += decision.outcome == "stolen"
        assert (decision.p_value < ALPHA) == (decision.outcome == "stolen")
        if result.exhausted:
            exhausted += 1
            fixed = NullPanelRule().decide(evidence, (1 - SEQUENTIAL_SHARE) * ALPHA, panel)
            assert decision.outcome == fixed.outcome
    assert accused <= most(runs, ALPHA)
    assert exhausted > runs // 10  # the exact path ran, not only the betting one


def test_the_null_panel_rule_clears_a_suspect_at_the_bound_at_most_clear_alpha_of_the_time():
    """Clearing costs no false accusation, but it may miss a thief: one whose mean over the rows sits at the
    critical value is cleared in at most CLEAR_ALPHA of the runs, even with the panel's scores (all low)
    priming the bettor on "below"."""
    rng = np.random.default_rng(6)
    cleared, runs, m = 0, 200, 30
    for _ in range(runs):
        panel_rows, _, victim = honest_world(rng, m)
        critical = 0.45
        suspect = (np.arange(m) < int(np.ceil(critical * m))).astype(float)  # 0/1 scores, mean exactly the bound
        order = rng.permutation(m)
        result = sequential_panel(stream(suspect[order]), critical=critical, victim=victim, panel=panel_rows,
                                  score_range=(0.0, 1.0), alpha=ALPHA, batch=2, cs_points=0)
        cleared += result.decision == BELOW
    assert cleared <= most(runs, CLEAR_ALPHA)


def test_a_copy_is_caught_and_an_honest_model_cleared_in_a_few_batches():
    rng = np.random.default_rng(7)
    panel_rows, suspect, victim = honest_world(rng, 100)
    critical = critical_value(panel_of(panel_rows), 100, (1 - SEQUENTIAL_SHARE) * 0.01)
    copy = sequential_panel(stream(victim), critical=critical, victim=victim, panel=panel_rows, score_range=(0.0, 1.0),
                            alpha=0.01, batch=2)
    assert copy.decision == ABOVE and copy.samples <= 16 and copy.cs_lower > critical
    honest = sequential_panel(stream(suspect), critical=critical, victim=victim, panel=panel_rows,
                              score_range=(0.0, 1.0), alpha=0.01, batch=2)
    assert honest.decision == BELOW and honest.samples <= 40 and honest.cs_upper < critical


@pytest.mark.parametrize("clear", [0.3, 0.05])
def test_paired_rule_with_its_t_test_fallback_keeps_false_accusations_below_alpha(clear):
    """MOVE's sequential paper rule (OwnershipMethod.verify_rules with sequential=true): the betting test at
    share alpha, then the fixed-m paired t-test at (1 - share) alpha, on suspects exactly as victim-like as
    the reference B (H0 at its boundary); clearing below 0.05 leaves many undecided, so the fallback runs."""
    rng = np.random.default_rng(8)
    accused, undecided, runs = 0, 0, 150
    for k in range(runs):
        # Meta-classifier outputs of S and B: the same distribution (mostly near 0, sometimes near 1).
        pool_s = np.where(rng.random(300) < 0.1, rng.uniform(0.5, 1, 300), rng.uniform(0, 0.05, 300))
        pool_b = rng.permutation(pool_s)  # same values, other pairing: mean difference exactly 0
        rows = np.random.default_rng(k).permutation(300)[:100]
        drawn: list[int] = []

        def pairs(n: int):
            chosen = rows[len(drawn):len(drawn) + n]
            drawn.extend(chosen.tolist())
            return pool_s[chosen], pool_b[chosen]

        result = sequential_paired(pairs, score_range=(0.0, 1.0), margin=0.0, clear=clear,
                                   alpha=SEQUENTIAL_SHARE * ALPHA, clear_alpha=CLEAR_ALPHA, batch=4, max_samples=100,
                                   pool_size=300, prior_above=np.full(20, 0.9), cs_points=0)
        taken = np.array(drawn)
        evidence = Evidence("move", "black-box", "black-box/train", "mean", pool_s[taken], taken,
                            paired=(pool_s[taken], pool_b[taken]), reference_name="B")
        decision = SequentialPairedRule(PairedTTestRule(), result).decide(evidence, ALPHA)
        accused += decision.outcome == "stolen"
        undecided += result.decision == UNDECIDED
        assert (decision.details["decided_by"] == "sequential") == (result.decision != UNDECIDED)
        assert (decision.p_value < ALPHA) == (decision.outcome == "stolen")
    assert accused <= most(runs, ALPHA)
    assert undecided > (runs // 4 if clear < 0.1 else -1)  # with clear 0.05 the fallback decides often
