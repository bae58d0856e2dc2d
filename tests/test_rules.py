"""Decision rules (stats.rules) and the one verdict builder (stats.verdicts): hand computations and gates."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from modelprove.core.errors import ModelproveError, SuspectError
from modelprove.core.verdict import INCONCLUSIVE, NOT_STOLEN, STOLEN, Verdict
from modelprove.stats import (
    Calibration, Competence, Evidence, NullPanelRule, PairedTTestRule, PanelStatistics, ThresholdRule, build_verdict,
    false_accusation_rates, prediction_interval_test, sd_floor,
)


def panel(values, recipes=None, arch="cnn_small", within=0.0):
    values = np.asarray(values, dtype=np.float64)
    recipes = recipes or [f"r{i % 2}" for i in range(len(values))]
    return PanelStatistics(arch, values, tuple(recipes), tuple(f"m{i}" for i in range(len(values))), within)


def evidence(scores, arch="cnn_small", binary=False, paired=None):
    scores = np.asarray(scores, dtype=np.float64)
    return Evidence("demo", "black-box", "black-box", "mean score", scores, np.arange(len(scores)), binary=binary,
                    paired=paired, reference_name="B", suspect_arch=arch)


def test_prediction_interval_matches_a_hand_computation():
    values = np.array([0.10, 0.20, 0.15, 0.05, 0.25, 0.30, 0.12, 0.18])
    k, mean, sd = len(values), values.mean(), values.std(ddof=1)
    t = (0.9 - mean) / (sd * math.sqrt(1 + 1 / k))
    test = prediction_interval_test(0.9, values)
    assert test.t == pytest.approx(t, rel=1e-9) and test.df == k - 1
    assert test.p_value == pytest.approx(stats.t.sf(t, df=k - 1), rel=1e-9)
    assert test.rank == 0 and test.z == pytest.approx((0.9 - mean) / sd, rel=1e-9)
    assert prediction_interval_test(0.10, values).rank == 7  # 0.10 and above: seven of the eight


def test_floor_keeps_an_agreeing_panel_from_accusing_every_difference():
    agreeing = panel([0.10] * 8)
    # 0/1 scores over m = 100: the binomial standard error of the panel's rate
    assert sd_floor(agreeing, 100, binary=True) == pytest.approx(math.sqrt(0.1 * 0.9 / 100), rel=1e-9)
    # a panel that never matched a key still cannot rule out a rate of about 1/m
    assert sd_floor(panel([0.0] * 8), 100, binary=True) == pytest.approx(math.sqrt(0.01 * 0.99 / 100), rel=1e-9)
    # continuous scores: one model's own row spread, over sqrt(m)
    assert sd_floor(panel([0.10] * 8, within=0.2), 25) == pytest.approx(0.04, rel=1e-9)
    rule = NullPanelRule()
    slightly = rule.decide(evidence(np.r_[np.ones(12), np.zeros(88)], binary=True), 0.01, agreeing)
    assert slightly.outcome == NOT_STOLEN  # 0.12 against a panel at exactly 0.10
    far = rule.decide(evidence(np.r_[np.ones(40), np.zeros(60)], binary=True), 0.01, agreeing)
    assert far.outcome == STOLEN and far.p_value < 1e-4


def test_false_accusation_rates_leave_one_out_and_one_recipe_out():
    # recipe c scores far above a and b: leaving it out, the others accuse both of its models
    values = [0.10, 0.11, 0.09, 0.12, 0.60, 0.62]
    recipes = ["a", "a", "b", "b", "c", "c"]
    rates = false_accusation_rates(panel(values, recipes), 0.01, 100)
    assert rates["by_recipe"]["c"] == 1.0 and rates["by_recipe"]["a"] == 0.0
    assert rates["leave_one_recipe_out"] == pytest.approx(2 / 6)
    assert rates["leave_one_out_tested"] == 6 and rates["leave_one_out"] < 0.5


def test_paper_paired_rule_is_the_paired_t_test():
    rng = np.random.default_rng(0)
    benign = rng.uniform(0, 0.3, 20)
    suspect = benign + rng.normal(0.2, 0.1, 20)
    decision = PairedTTestRule().decide(evidence(suspect, paired=(suspect, benign)), 0.01)
    assert decision.p_value == pytest.approx(stats.ttest_rel(suspect, benign, alternative="greater").pvalue, rel=1e-9)
    assert decision.effect == pytest.approx(np.mean(suspect - benign), rel=1e-9) and decision.outcome == STOLEN


def test_threshold_rule_with_binomial():
    rule = ThresholdRule(0.5, chance=0.1, require_binomial=True)
    assert rule.decide(evidence(np.r_[np.ones(60), np.zeros(40)], binary=True), 0.01).outcome == STOLEN
    assert rule.decide(evidence(np.r_[np.ones(40), np.zeros(60)], binary=True), 0.01).outcome == NOT_STOLEN


def verdict(ev, calibration=None, competence=None, rule=None):
    return build_verdict(ev, rule or NullPanelRule(), suspect="s", alpha=0.01, seed=0, start=time.perf_counter(),
                         calibration=calibration, competence=competence)


HONEST = {"cnn_small": panel([0.10, 0.12, 0.08, 0.11, 0.09, 0.13, 0.10, 0.12]),
          "lenet5": panel([0.85, 0.95, 0.90, 0.99, 0.80, 0.92, 0.97, 0.88], arch="lenet5")}


def test_gates_make_inconclusive_an_answer():
    high = evidence(np.full(50, 0.95))
    calibration = Calibration(panels=HONEST, victim_statistic=0.97)
    # a competent suspect of a panel architecture with power: decided by the rule
    assert verdict(high, calibration).outcome == STOLEN
    # an incompetent suspect: never stolen, whatever it scores
    lost = Competence(accuracy=0.11, chance=0.10, threshold=0.49, images=200, queries=200)
    v = verdict(high, calibration, lost)
    assert v.outcome == INCONCLUSIVE and "not a competent model" in v.reason and v.queries == 200
    # an architecture without a panel
    v = verdict(evidence(np.full(50, 0.95), arch="resnet20"), calibration)
    assert v.outcome == INCONCLUSIVE and "no null panel of architecture resnet20" in v.reason
    # honest lenet5 models score like the victim: no power for lenet5 suspects
    v = verdict(evidence(np.full(50, 0.95), arch="lenet5"), calibration)
    assert v.outcome == INCONCLUSIVE and "no power" in v.reason and v.self_test["detected"] is False
    # an unknown architecture could be any: a powerless panel among them makes it inconclusive
    assert verdict(evidence(np.full(50, 0.95), arch=None), calibration).outcome == INCONCLUSIVE
    powered = Calibration(panels={"cnn_small": HONEST["cnn_small"], "vgg_small": panel([0.2, 0.3, 0.25, 0.22, 0.28],
                                                                                       arch="vgg_small")},
                          victim_statistic=0.97)
    v = verdict(evidence(np.full(50, 0.95), arch=None), powered)
    assert v.outcome == STOLEN and v.panel["architecture"] == "vgg_small"  # the least extreme comparison
    assert "unknown" in v.reason


def test_a_failed_premise_makes_the_panel_rule_inconclusive_and_leaves_the_paper_rule_alone():
    """Gate 4: a victim that does not carry the feature (a trigger it never learned) makes no claim, even where
    the suspect stands far above a panel the victim itself passes; the paper's test is reproduced as published."""
    why = "the victim did not learn its trigger"
    high = evidence(np.full(50, 0.95), paired=(np.full(50, 0.95), np.full(50, 0.10)))
    calibration = Calibration(panels=HONEST, victim_statistic=0.97, premise=why)
    v = verdict(high, calibration)
    assert v.outcome == INCONCLUSIVE and v.reason == why and v.p_value is None
    assert v.panel["architecture"] == "cnn_small" and v.self_test["detected"]  # what it was compared with, still said
    assert verdict(high, dataclasses.replace(calibration, premise=None)).outcome == STOLEN
    paper = build_verdict(high, PairedTTestRule(), suspect="s", alpha=0.01, seed=0, start=time.perf_counter(),
                          calibration=calibration)
    assert paper.outcome == STOLEN


def test_corroboration_is_an_intersection_union_test():
    """A stolen that needs a second setting's agreement stands only if that verdict is stolen too, with the
    larger p; a cleared or powerless second setting turns it into not stolen or inconclusive; a first verdict
    that is not stolen is never made stolen by the second."""
    calibration = Calibration(panels=HONEST, victim_statistic=0.97)
    high, low = evidence(np.full(50, 0.95)), evidence(np.full(50, 0.10))
    stolen, cleared = verdict(high, calibration), verdict(low, calibration)
    powerless = verdict(evidence(np.full(50, 0.95), arch="lenet5"), calibration)
    assert (stolen.outcome, cleared.outcome, powerless.outcome) == (STOLEN, NOT_STOLEN, INCONCLUSIVE)

    def both(first, second):
        return build_verdict(first, NullPanelRule(), suspect="s", alpha=0.01, seed=0, start=time.perf_counter(),
                             calibration=calibration, corroboration=second)

    agreed = both(high, dataclasses.replace(stolen, p_value=0.004))
    assert agreed.outcome == STOLEN and agreed.p_value == 0.004 and agreed.details["corroboration"]["outcome"] == STOLEN
    denied = both(high, cleared)
    assert denied.outcome == NOT_STOLEN and denied.p_value == cleared.p_value and "needs the black-box evidence" in denied.reason
    assert both(high, powerless).outcome == INCONCLUSIVE
    assert both(low, stolen).outcome == NOT_STOLEN  # the second setting never accuses on its own


def test_verdict_record_round_trips_as_json(tmp_path):
    v = verdict(evidence(np.full(50, 0.95)), Calibration(panels=HONEST, victim_statistic=0.97))
    record = json.loads(json.dumps(v.to_dict()))
    assert record["outcome"] == STOLEN and record["stolen"] is True and record["decision"] == "STOLEN"
    assert record["panel"]["k"] == 8 and record["panel"]["false_accusation_rate"]["alpha"] == 0.01
    assert record["modelprove_version"] and record["created"].endswith("Z")
    path = v.save(tmp_path / "v.json")
    again = Verdict.load(path)
    assert again.outcome == v.outcome and again.panel == record["panel"]
    (tmp_path / "other.json").write_text('{"not": "a verdict"}')
    with pytest.raises(ModelproveError, match="not a modelprove verdict"):
        Verdict.load(tmp_path / "other.json")


def test_evidence_refuses_non_finite_scores():
    with pytest.raises(SuspectError, match="not finite"):
        evidence(np.array([0.1, np.nan, 0.2]))


def test_a_constant_answer_is_never_competent():
    from modelprove.stats import competence_threshold

    # halfway from chance to the victim's accuracy
    assert competence_threshold(0.90, 0.10, 0.5) == pytest.approx(0.50)
    # beside a victim that is itself near (or below) chance, still clearly above chance: a constant answer
    # scores exactly the largest class share, and must never pass
    for victim in (0.05, 0.10, 0.12):
        threshold = competence_threshold(victim, 0.10, 0.5)
        assert threshold >= 0.15 and not Competence(0.10, 0.10, threshold, 200).competent


def test_critical_value_is_where_the_panel_test_starts_to_reject():
    from modelprove.stats.rules import critical_value, panel_test

    honest = panel([0.10, 0.12, 0.08, 0.11, 0.09, 0.13, 0.10, 0.12], within=0.1)
    c = critical_value(honest, 100, 0.01)
    assert panel_test(c + 1e-6, honest, 100).p_value < 0.01 < panel_test(c - 1e-6, honest, 100).p_value



def test_default_panel_spans_its_recipes_and_no_method_fits_to_them():
    """The default null panel has every default recipe equally often per architecture, and no recipe a
    method trains its own models with (MOVE's negatives, CAE's references, key-watermark references):
    otherwise the panel would only show recipes the method was fitted to ignore."""
    from modelprove.methods import cae, key_watermarks, move
    from modelprove.methods.panel import FIRST_PANEL_RECIPES, PANEL_RECIPES, PanelConfig, panel_members

    members = panel_members(PanelConfig(), "cnn_small")
    archs = {m.arch for m in members}
    assert len(archs) == 3
    for arch in archs:
        counts = Counter(m.recipe.name for m in members if m.arch == arch)
        assert set(counts) == set(PANEL_RECIPES) and len(set(counts.values())) == 1
    assert set(FIRST_PANEL_RECIPES) < set(PANEL_RECIPES)
    fitted = {*move.MoveConfig().negative_recipe_list(), *cae.CaeConfig().arch_list("reference_recipes"),
              *(spec.split(":")[1] for spec in key_watermarks.KeyWatermarkConfig().reference_models.split(","))}
    assert not fitted & set(PANEL_RECIPES)
    # a smaller panel takes the recipes in turn: its first four models are the first panel's recipes
    assert [m.recipe.name for m in panel_members(PanelConfig(size=4, architectures="mlp"), "mlp")] == list(
        FIRST_PANEL_RECIPES)
