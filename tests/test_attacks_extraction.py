"""Extraction attacks that train a fresh student: distillation (dataset-accessible, black-box),
zero-shot DFAD (model-accessible, white-box, no data) and transfer learning (adapted, label-only).

For every attack: fidelity to the victim clearly above chance (4 classes: 0.25), its oracle level
(and a lower one refused), the query count equal to the oracle's, and attacker data disjoint from
the defender's; plus config validation naming the field.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from modelprove.attacks import ATTACKS, run_attack
from modelprove.attacks.base import victim_access
from modelprove.training.students import soften
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.models import build_model
from modelprove.training import TrainConfig, train

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def victim(bars_task):
    defender, attacker, _ = bars_task
    hashes = {bytes(img.numpy()) for img in defender.images}
    assert not any(bytes(img.numpy()) in hashes for img in attacker.images)  # disjoint draws
    torch.manual_seed(0)
    model = build_model("cnn_small", 1, 4, (28, 28))
    train(model, defender, TrainConfig(epochs=3, seed=0), show_progress=False)
    return model.eval()


def spy_on(monkeypatch, name):
    """Record the access object the harness hands the attack."""
    seen = []
    spec = ATTACKS[name]

    def steal(access, data, config):
        seen.append(access)
        return spec.steal(access, data, config)

    monkeypatch.setitem(ATTACKS, name, dataclasses.replace(spec, steal=steal))
    return seen


def test_distill_learns_the_victim_from_probabilities(victim, bars_task, monkeypatch):
    _, attacker, test = bars_task
    seen = spy_on(monkeypatch, "distill")
    suspect, lineage = run_attack("distill:epochs=2,batch_size=64", victim, attacker, test=test)
    stage = lineage["stages"][0]
    assert lineage["fidelity"] > 0.8
    assert seen[0].level == "black-box" and not hasattr(seen[0], "model")  # probabilities, never weights
    assert stage["queries"] == seen[0].queries == len(attacker)  # the transfer set is queried once
    assert stage["data"] == "bars-attacker" and stage["training"]["dataset"] == "bars-attacker"
    assert suspect.arch == "cnn_small"  # a black-box adversary does not know the victim's architecture
    other, _ = run_attack("distill:epochs=1,batch_size=400,arch=lenet5", victim, attacker)
    assert other.arch == "lenet5"


def test_distill_refuses_a_label_only_victim(victim, bars_task):
    label_only = victim_access(victim, "label-only")
    with pytest.raises(ModelproveError, match="black-box"):
        ATTACKS["distill"].steal(label_only, bars_task[1], ATTACKS["distill"].config(epochs=1))
    assert label_only.queries == 0


def test_softening_probabilities_equals_softening_logits():
    logits = torch.randn(5, 7) * 4
    for T in (0.5, 1.0, 4.0, 20.0):
        assert torch.allclose(soften(logits.softmax(dim=1), T), (logits / T).softmax(dim=1), atol=1e-5)


def test_zero_shot_steals_without_any_data_and_counts_every_teacher_image(victim, bars_task, monkeypatch):
    seen = spy_on(monkeypatch, "zero_shot")
    for p in victim.parameters():
        p.grad = None  # the fixture's last training step left gradients behind
    params = "iterations=12,batch_size=128,generator_width=16,student_steps=5"
    suspect, lineage = run_attack(f"zero_shot:{params}", victim, None, test=bars_task[2])
    stage = lineage["stages"][0]
    assert stage["data"] is None and stage["uses_data"] is False
    assert stage["queries"] == seen[0].queries == 12 * (5 + 1) * 128  # student steps + generator step
    # No fidelity threshold: at this test's budget the student learns the victim only for some seeds
    # (fidelity over 4 seeds of the bars task: 0.66, 0.25, 0.25, 0.25 at 12 iterations; 0.88, 0.50,
    # 0.59, 0.25 at 24, 17 s each). Whether zero-shot steals is the benchmark's measurement (README).
    assert all(p.grad is None for p in victim.parameters())  # gradients reached the images, not the victim
    assert all(p.requires_grad for p in victim.parameters())  # and the victim is left as it was


def test_zero_shot_refuses_a_black_box_victim(victim):
    with pytest.raises(ModelproveError, match="white-box"):
        ATTACKS["zero_shot"].steal(victim_access(victim, "black-box"), None, ATTACKS["zero_shot"].config())


def test_white_box_logits_are_counted_and_budgeted(victim):
    from modelprove.access import QueryBudgetError

    access = victim_access(victim, "white-box", budget=10)
    images = torch.rand(6, 1, 28, 28, requires_grad=True)
    access.logits(images).sum().backward()
    assert access.queries == 6 and images.grad is not None
    with pytest.raises(QueryBudgetError):
        access.logits(images)


def test_transfer_sees_labels_only(victim, bars_task, monkeypatch):
    _, attacker, test = bars_task
    seen = spy_on(monkeypatch, "transfer")
    params = "source_limit=1000,pretrain_epochs=1,epochs=2,batch_size=64"
    suspect, lineage = run_attack(f"transfer:{params}", victim, attacker, test=test)
    stage = lineage["stages"][0]
    access = seen[0]
    assert access.level == "label-only"
    assert not hasattr(access, "probabilities") and not hasattr(access, "model")
    assert stage["queries"] == access.queries == len(attacker)
    assert stage["pretraining"]["dataset"] == "mnist-digits->1x28x28"
    assert stage["training"]["dataset"] == "bars-attacker labelled by the victim"
    assert lineage["fidelity"] > 0.8


@pytest.mark.parametrize("name,pair,field", [
    ("distill", "T=0", "T"), ("distill", "alpha=1.5", "alpha"), ("distill", "arch=alexnet", "arch"),
    ("distill", "epochs=0", "epochs"), ("distill", "augmentation=rotate", "augmentation"),
    ("zero_shot", "iterations=0", "iterations"), ("zero_shot", "batch_size=1", "batch_size"),
    ("zero_shot", "generator_lr=0", "generator_lr"), ("zero_shot", "student_steps=0", "student_steps"),
    ("zero_shot", "generator_width=1", "generator_width"),
    ("transfer", "source=noise", "source"), ("transfer", "source=imagenet", "source"),
    ("transfer", "pretrain_epochs=0", "pretrain_epochs"), ("transfer", "source_limit=0", "source_limit"), ("transfer", "lr=0", "lr"),
])
def test_extraction_config_errors_name_the_field(name, pair, field):
    with pytest.raises(ModelproveError, match=rf"Config\.{field} must be"):
        config_from_pairs(ATTACKS[name].config, [pair])
