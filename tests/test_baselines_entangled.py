"""Entangled Watermarks (methods/entangled.py) on the tiny bars task, and its SNNL against hand computations."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn as nn

from modelprove.access import BlackBoxAccess, LabelOnlyAccess
from modelprove.core.errors import ModelproveError, ProtectionError, SuspectError
from modelprove.methods import METHODS, entangled
from modelprove.models import build_model, predict_labels
from modelprove.training import TrainConfig, train

# cnn_small, the method's default: LeNet-5 at lr 0.05 diverged for another seed of the bars task (the
# watermark, the copy's verdict and the hand-computed t-test then failed); cnn_small learned the task
# and the watermark (1.0 / 1.0) for seeds 0-2, copy white-box p <= 3e-24.
CONFIG = dict(arch="cnn_small", epochs=12, m_black_box=50)


@pytest.fixture(scope="module")
def protection(tmp_path_factory, bars_task, tiny_panel, single_thread):
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp("entangled") / "protection"
    made = entangled.protect(defender, test, out, entangled.EntangledConfig(**CONFIG), panel=tiny_panel)
    return out, made


@pytest.fixture(scope="module")
def independent(bars_task, single_thread):
    """Trained on the attacker's draw of the task with another seed: shares nothing with the victim."""
    _, attacker, _ = bars_task
    torch.manual_seed(5)
    model = build_model("lenet5", 1, attacker.num_classes, (28, 28))
    train(model, attacker, TrainConfig(epochs=12, seed=5, lr=0.02), show_progress=False)  # 0.05 can diverge
    return model


def test_registered_with_the_benchmark_contract():
    spec = METHODS["entangled"]
    assert spec.config is entangled.EntangledConfig and spec.verify_options == entangled.VERIFY_OPTIONS
    config = spec.config()
    for name in ("arch", "epochs", "batch_size", "lr", "augmentation", "seed", "alpha", "m"):
        assert hasattr(config, name)
    assert config.alpha == 0.01 and config.arch == "cnn_small"


def test_protection_is_complete_and_keeps_accuracy(protection, bars_task):
    out, made = protection
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "entangled"
    assert {"victim.safetensors", "victim.json", "verification.safetensors"} <= set(manifest["files"])
    results = made.results
    assert results["victim_test_accuracy"] > 0.9  # the SNNL term must not wreck the task
    assert results["victim_watermark_success"] > 0.9  # on held-out source images
    assert results["watermarks"] == 80  # 10% of 800, all drawn from the 200 source-class images
    # the victim and the null panel's calibration (methods/base.py records it for every method)
    assert set(results["seconds"]) == {"train_victim", "calibration"}
    opened = entangled.open_protection(out)
    test = bars_task[2]
    assert len(opened.pool) == int((test.labels == 0).sum())  # every held-out source image (< 300)


def test_victim_is_flagged_in_both_settings(protection):
    out, made = protection
    opened = entangled.open_protection(out)
    white = entangled.verify(opened, copy.deepcopy(made.victim), suspect_name="copy")
    assert white.setting == "white-box" and white.stolen and white.statistic > 0.3 and white.queries is None
    assert white.samples == 10 and white.details["trigger_success_rate"] > 0.8
    black = entangled.verify(opened, BlackBoxAccess.from_model(made.victim, name="api"))
    assert black.setting == "black-box" and black.stolen and black.samples == 50
    # m triggered + the same m without the trigger, and the competence check's clean images
    assert black.queries == 100 + black.competence["images"]


def test_independent_model_is_cleared(protection, independent):
    """It does not carry the watermark: no success on triggered images and no effect (the victim's is
    about 1), and the null-panel rule clears it in both settings for every seed. The paper's t-test's
    verdict is not asserted: on saturated probabilities it calls differences of 1e-4 significant
    (independent cnn_small models over 3 seeds: effects <= 3e-4, white-box p 0.010-0.068, black-box p
    0.0003-0.016), the false accusation that the null panel is for."""
    out, _ = protection
    for setting in ("white-box", "black-box"):
        paper = entangled.verify(out, independent, setting=setting, rule="paper")
        assert abs(paper.effect) < 0.05 and paper.details["trigger_success_rate"] < 0.1, paper
        for seed in range(5):
            verdict = entangled.verify(out, independent, setting=setting, seed=seed)
            assert verdict.outcome == "not stolen", (setting, seed, verdict.reason)


def test_verdict_matches_a_hand_computed_paired_ttest(protection):
    from scipy import stats

    out, made = protection
    opened = entangled.open_protection(out)
    verdict = entangled.verify(opened, made.victim, seed=4, rule="paper")
    rows = torch.randperm(len(opened.pool), generator=torch.Generator().manual_seed(4))[:10]
    clean = opened.pool[rows].float() / 255
    triggered = clean.clone()
    triggered[..., -4:, -4:] = 1.0  # the default 4x4 white square, by hand
    with torch.no_grad():
        p_trig = made.victim(triggered).softmax(1)[:, 1].double().numpy()
        p_clean = made.victim(clean).softmax(1)[:, 1].double().numpy()
    expected = stats.ttest_rel(p_trig, p_clean, alternative="greater")
    assert verdict.p_value == pytest.approx(expected.pvalue, rel=1e-4, abs=1e-12)
    assert verdict.effect == pytest.approx((p_trig - p_clean).mean(), abs=1e-5)
    again = entangled.verify(opened, made.victim, seed=4, rule="paper")
    assert again.p_value == verdict.p_value and again.effect == verdict.effect


def test_snnl_matches_hand_computation():
    # three points on a line, h = 0, 1, 3; labels a, a, b; T = 1
    h = torch.tensor([[0.0], [1.0], [3.0]])
    labels = torch.tensor([0, 0, 1])
    e = math.exp
    # i=0: same {1}: e^-1; all {1, 2}: e^-1 + e^-9.  i=1: same {0}: e^-1; all: e^-1 + e^-4.  i=2: no partner, left out
    expected = -(math.log(e(-1) / (e(-1) + e(-9))) + math.log(e(-1) / (e(-1) + e(-4)))) / 2
    got = entangled.soft_nearest_neighbour_loss(h, labels, torch.tensor(1.0))
    # float32: the loss (0.0245) is a difference of log-sums near -1, so one ulp there (6e-8) is 2.4e-6 of
    # it, more than rel=1e-6 allows if another CPU's exp/log round differently; abs=1e-6 is ~16 ulps
    assert float(got) == pytest.approx(expected, rel=0, abs=1e-6)
    # temperature divides the squared distances
    expected_t2 = -(math.log(e(-0.5) / (e(-0.5) + e(-4.5))) + math.log(e(-0.5) / (e(-0.5) + e(-2)))) / 2
    assert float(entangled.soft_nearest_neighbour_loss(h, labels, torch.tensor(2.0))) == pytest.approx(expected_t2, rel=0, abs=1e-6)


def test_snnl_is_higher_for_entangled_than_for_separated_groups():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 8 + [1] * 8)
    mixed = torch.randn(16, 5, generator=g)
    separated = mixed + 10 * labels.view(-1, 1).float()
    t = torch.tensor(1.0)
    assert entangled.soft_nearest_neighbour_loss(mixed, labels, t) > 0.5
    assert entangled.soft_nearest_neighbour_loss(separated, labels, t) < 1e-6
    # no finite overflow for very distant points (log-sum-exp)
    assert torch.isfinite(entangled.soft_nearest_neighbour_loss(separated * 1e3, labels, t))


def test_entanglement_loss_is_ce_minus_kappa_snnl():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    config = entangled.EntangledConfig(kappa=0.5, snnl_layers=1, temperature_lr=0.0, target_class=1, source_class=0)
    is_watermark = torch.tensor([True, True, False, False, False, False])
    loss = entangled.EntanglementLoss(model, is_watermark, target_class=1, config=config)
    x = torch.randn(6, 1, 2, 2)
    labels = torch.tensor([1, 1, 1, 1, 0, 0])
    logits = model(x)
    value = loss(logits, torch.arange(6), labels).detach()
    hidden = torch.relu(model[1](x.flatten(1)))[:4].detach()  # the ReLU's output for watermark + target rows
    group = torch.tensor([1, 1, 0, 0])
    temperature = torch.cdist(hidden, hidden).pow(2).median()  # the initial T: the median squared distance
    assert temperature > 0.01
    expected = nn.functional.cross_entropy(logits, labels) - 0.5 * entangled.soft_nearest_neighbour_loss(
        hidden, group, temperature)
    assert float(value) == pytest.approx(float(expected.detach()), rel=1e-5)
    loss.remove()
    assert loss.temperatures()[0] == pytest.approx(float(temperature), rel=1e-5)


def test_parameter_checks(protection, bars_task):
    with pytest.raises(ModelproveError, match="must differ"):
        entangled.EntangledConfig(source_class=2, target_class=2)
    with pytest.raises(ModelproveError, match="kappa"):
        entangled.EntangledConfig(kappa=-1)
    with pytest.raises(ModelproveError, match="watermark_rate"):
        entangled.EntangledConfig(watermark_rate=0.0)
    with pytest.raises(ModelproveError, match="at least 2"):
        entangled.EntangledConfig(m=1)
    defender, _, test = bars_task
    with pytest.raises(ModelproveError, match="target_class = 7 but .* 4 classes"):
        entangled.protect(defender, test, "/nonexistent/never-written", entangled.EntangledConfig(target_class=7))
    out, made = protection
    with pytest.raises(ModelproveError, match="no option"):
        entangled.verify(out, made.victim, m_typo=3)
    with pytest.raises(ModelproveError, match="exceeds"):
        entangled.verify(out, made.victim, m=10_000)
    with pytest.raises(ProtectionError, match="already exists"):
        entangled.protect(defender, test, out, entangled.EntangledConfig(**CONFIG))
    label_only = LabelOnlyAccess(lambda x: predict_labels(made.victim, x), num_classes=4, input_shape=(1, 28, 28))
    with pytest.raises(SuspectError, match="needs black-box access"):
        entangled.verify(out, label_only)
