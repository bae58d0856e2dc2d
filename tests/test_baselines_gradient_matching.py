"""Gradient-matching watermark (Witches' Brew style, clean label; MOVE's baseline) on the tiny bars task.

The alignment loss is checked against a hand computation, the crafting against its constraints
(||Δ||_inf <= eps, images in [0, 1], labels unchanged), and the protection end to end: it clears an
unrelated model, and its verification (BadNets' t-test) flags a model that does carry the trigger.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from modelprove.access import WhiteBoxAccess
from modelprove.core.errors import ModelproveError, ProtectionError
from modelprove.methods import METHODS, badnets, gradient_matching as gm
from modelprove.models import build_model
from modelprove.training import train

# lr 0.02: at the trainer's 0.05, LeNet-5 (no BatchNorm, Nesterov momentum 0.9) spiked on the poisoned
# set (epoch losses 0.40 -> 21.6) and died at chance (test accuracy 0.25, loss ln 4) for the test's seed,
# and its surrogate stayed at 0.30 for another; at 0.02 every victim of 6 seeds reached 1.0.
CONFIG = dict(arch="lenet5", epochs=12, verification_pool=150, lr=0.02)


@pytest.fixture(scope="module")
def protection(tmp_path_factory, bars_task, tiny_panel, single_thread):
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp("gm") / "protection"
    made = gm.protect(defender, test, out, gm.GradientMatchingConfig(**CONFIG), panel=tiny_panel)
    return out, made


def test_alignment_loss_is_one_minus_the_cosine_of_the_flattened_gradients(single_thread):
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 4, (28, 28)).eval()
    poisons, labels = torch.rand(5, 1, 28, 28), torch.tensor([0, 1, 2, 3, 0])
    params = [p for p in model.parameters() if p.requires_grad]
    target_grad = [torch.randn_like(p) for p in params]
    target_norm = torch.sqrt(sum(t.pow(2).sum() for t in target_grad))
    loss = gm.alignment_loss(model, poisons, labels, target_grad, target_norm)
    grads = torch.autograd.grad(F.cross_entropy(model(poisons), labels), params)
    flat, flat_target = torch.cat([g.flatten() for g in grads]), torch.cat([t.flatten() for t in target_grad])
    assert float(loss.detach()) == pytest.approx(1 - float(F.cosine_similarity(flat, flat_target, dim=0)), abs=1e-5)
    # aligned with itself the loss is 0, with its opposite 2
    own = [g.detach() for g in grads]
    own_norm = torch.sqrt(sum(g.pow(2).sum() for g in own))
    assert float(gm.alignment_loss(model, poisons, labels, own, own_norm).detach()) == pytest.approx(0.0, abs=1e-5)
    assert float(gm.alignment_loss(model, poisons, labels, [-g for g in own], own_norm).detach()) == pytest.approx(2.0, abs=1e-5)
    # and it is differentiable in the poisons (the crafting's gradient)
    x = poisons.clone().requires_grad_(True)
    gm.alignment_loss(model, x, labels, target_grad, target_norm).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_crafting_lowers_the_alignment_loss_within_the_eps_ball(bars_task, single_thread):
    defender = bars_task[0]
    surrogate = badnets.new_model("lenet5", defender, 1)
    train(surrogate, defender, gm.GradientMatchingConfig(epochs=3).train_config(1), show_progress=False)
    target_rows = torch.nonzero(defender.labels == 0).squeeze(1)[:32]
    source_rows = torch.nonzero(defender.labels != 0).squeeze(1)[:64]
    target_grad = gm.adversarial_gradient(surrogate.eval(), defender.as_float(source_rows), 0, 3)
    bases = defender.as_float(target_rows)
    config = gm.GradientMatchingConfig(craft_steps=10, craft_batch=16, eps=8 / 255)
    delta, record = gm.craft_poisons(surrogate, bases, defender.labels[target_rows], target_grad, config, seed=4)
    assert record["alignment_loss_after"][0] < record["alignment_loss_before"] - 0.02
    assert delta.abs().max() <= 8 / 255 + 1e-6
    assert (bases + delta).min() >= 0 and (bases + delta).max() <= 1
    again, _ = gm.craft_poisons(surrogate, bases, defender.labels[target_rows], target_grad, config, seed=4)
    assert torch.equal(delta, again)  # a seed gives the same poisons


def test_protection_poisons_only_target_class_images_within_eps(protection, bars_task):
    out, made = protection
    defender = bars_task[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "gradient-matching"
    assert {"victim.safetensors", "victim.json", "verification.safetensors",
            "gradient-matching.safetensors"} <= set(manifest["files"])
    results = manifest["results"]
    assert results["poisons"] == 80 and results["poison_fraction_of_set"] == 0.1  # 10% of 800, all of class 0
    assert results["max_perturbation_pixels"] <= 16  # eps = 16/255
    assert results["alignment_loss_after"][0] < results["alignment_loss_before"]
    assert results["victim_test_accuracy"] > 0.8  # clean labels: the victim still learns the task
    from safetensors.torch import load_file

    stored = load_file(str(out / "gradient-matching.safetensors"))
    rows = stored["poison_rows"]
    assert (defender.labels[rows] == 0).all()  # clean label: every poison is a target-class image
    change = (stored["poisons"].int() - defender.images[rows].int()).abs()
    assert change.max() <= 16 and change.float().mean() > 1  # perturbed, within the ball


def test_unrelated_model_is_cleared(protection, bars_task):
    """As BadNets' (tests/test_baselines_badnets.py): no effect in either setting. This victim does not
    learn the trigger on the bars task (clean-label poisons at eps 16/255: 0 of 150 pool images turned to
    the target), so the null-panel rule makes no claim at all (the premise check: inconclusive, not
    "not stolen"); the paper's black-box t-test at m = 100 flags some independent models, so it is not
    asserted."""
    out, _ = protection
    _, attacker, _ = bars_task
    model = badnets.new_model("lenet5", attacker, 123)
    train(model, attacker, gm.GradientMatchingConfig(**CONFIG).train_config(123), show_progress=False)
    for setting in ("white-box", "black-box"):
        paper = gm.verify(out, WhiteBoxAccess(model, name="unrelated"), setting=setting, rule="paper")
        assert abs(paper.effect) < 0.01 and paper.method == "gradient-matching", paper
        for seed in range(5):
            verdict = gm.verify(out, WhiteBoxAccess(model, name="unrelated"), setting=setting, seed=seed)
            assert verdict.outcome == "inconclusive" and "did not learn its trigger" in verdict.reason, \
                (setting, seed, verdict.reason)


def test_verification_flags_a_model_that_carries_the_trigger(protection, bars_task, tmp_path):
    """The same trigger (3x3 white square, target 0) learned by BadNets poisoning is detected through
    the gradient-matching protection's verification path, black-box with 2m queries."""
    out, _ = protection
    defender, _, test = bars_task
    carrier = badnets.protect(defender, test, tmp_path / "badnets",  # cnn_small learns it: see test_baselines_badnets
                              badnets.BadNetsConfig(arch="cnn_small", epochs=12, verification_pool=150)).victim
    verdict = gm.verify(out, WhiteBoxAccess(carrier, name="carrier").as_black_box(), rule="paper")
    # it learned the trigger: ~1; 2m queries and the competence check's clean images
    assert verdict.stolen and verdict.queries == 200 + verdict.competence["images"] and verdict.effect > 0.5


def test_parameter_checks_and_registry(protection):
    out, _ = protection
    for bad, match in (({"eps": 0.0}, "eps"), ({"craft_steps": 0}, "craft_steps"), ({"restarts": 0}, "restarts"),
                       ({"retrain_every": -1}, "retrain_every"), ({"craft_lr": 0}, "craft_lr"),
                       ({"surrogate_epochs": 0}, "surrogate_epochs"), ({"m_black_box": 1}, "m_black_box")):
        with pytest.raises(ModelproveError, match=match):
            gm.GradientMatchingConfig(**bad)
    with pytest.raises(ProtectionError, match="not 'badnets'"):
        badnets.open_protection(out)
    with pytest.raises(ProtectionError, match="not 'badnets'"):  # an opened protection of the other method
        badnets.verify(gm.open_protection(out), build_model("lenet5", 1, 4, (28, 28)))
    spec = METHODS["gradient-matching"]
    assert spec.access == ("white-box", "black-box") and spec.verify_options == ("m", "m_black_box", "alpha")
    assert {"arch", "epochs", "batch_size", "lr", "augmentation", "seed", "alpha", "m", "m_black_box"} <= set(
        spec.config.__dataclass_fields__)
    assert spec.config().eps == pytest.approx(16 / 255)


def test_too_few_verification_images_fail_before_any_training(bars_task, tmp_path):
    defender, _, test = bars_task
    with pytest.raises(ModelproveError, match="outside the target class"):
        gm.protect(defender, test.subset(range(100)), tmp_path / "p", gm.GradientMatchingConfig(verification_pool=120))
    with pytest.raises(ModelproveError, match="target = 7 is not a class"):
        gm.protect(defender, test, tmp_path / "p", gm.GradientMatchingConfig(target=7))
    assert not (tmp_path / "p").exists()


def test_trigger_learning_study_reads_the_victim_and_runs_the_plain_trigger_control(protection, bars_task):
    """The bench study (bench/studies.py trigger-learning): the protection's own record, the benign
    model's trigger success, and control victims with the plain trigger on the protection's poison rows,
    trained with the protection's own recipe: at amplitude 0 the control is exactly the clean victim that
    recipe makes. (On the bars task even the full-amplitude clean-label trigger is not learned, trigger
    success 0.0 at 0 and 255/255, measured: the bars alone separate the classes; it is not asserted.)"""
    from types import SimpleNamespace

    from modelprove.bench.studies import STUDIES, StudyInput

    out, made = protection
    defender, attacker, test = bars_task
    opened = gm.open_protection(out)
    benign = badnets.new_model("lenet5", attacker, 5)
    train(benign, attacker, gm.GradientMatchingConfig(**CONFIG).train_config(5), show_progress=False)
    study = STUDIES["trigger-learning"]
    assert study.applies(METHODS["gradient-matching"]) and not study.applies(METHODS["move"])
    params = study.parameters({"controls": [0, 255]})
    data = StudyInput(METHODS["gradient-matching"], opened, opened.victim,
                      SimpleNamespace(defender=defender, test=test), 0, 0.01, benign=benign)
    result = study.measure(data, params)
    assert result["victim_trigger_success_rate"] == made.results["victim_trigger_success_rate"]
    assert result["poisons"] == 80 and 0 <= result["benign_trigger_success_rate"] <= 1
    plain, full = result["controls"]
    assert (plain["levels"], full["levels"]) == (0, 255)
    clean = badnets.new_model("lenet5", defender, opened.config.seed)
    train(clean, defender, opened.config.train_config(opened.config.seed), show_progress=False)
    expected = badnets.trigger_results(clean, test, badnets.verification_pool(test, 0, 150, opened.config.seed + 2),
                                       opened.config)
    assert plain["trigger_success_rate"] == expected["victim_trigger_success_rate"]
    assert plain["test_accuracy"] == expected["victim_test_accuracy"]
    assert min(plain["test_accuracy"], full["test_accuracy"]) > 0.8  # labels kept: the task is still learned
    with pytest.raises(ModelproveError, match="list of numbers"):
        study.parameters({"controls": ["16"]})
