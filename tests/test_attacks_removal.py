"""Fully-accessible removal attacks (CAE Sec. 5, MOVE Sec. 6.1): fine-tuning variants and pruning.

For every attack: fidelity to the victim clearly above chance (4 classes: 0.25), the oracle level it
is given (and a lower one refused), the query count equal to the oracle's, attacker data disjoint
from the defender's, and its config validation naming the field.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelprove.access import WhiteBoxAccess
from modelprove.attacks import ATTACKS, run_attack
from modelprove.attacks._shared import last_linear
from modelprove.attacks.base import victim_access
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.models import ARCHITECTURES, build_model
from modelprove.training import TrainConfig, train

FAST = "epochs=1,batch_size=64"


@pytest.fixture(scope="module")
def victim(bars_task):
    defender, _, _ = bars_task
    torch.manual_seed(0)
    model = build_model("cnn_small", 1, 4, (28, 28))
    train(model, defender, TrainConfig(epochs=3, seed=0), show_progress=False)
    return model.eval()


def assert_disjoint(a, b):
    hashes = {bytes(img.numpy()) for img in a.images}
    assert not any(bytes(img.numpy()) in hashes for img in b.images)


def run(name, params, victim, bars_task):
    defender, attacker, test = bars_task
    assert_disjoint(defender, attacker)
    suspect, lineage = run_attack(f"{name}:{params}", victim, attacker, test=test, seed=0)
    stage = lineage["stages"][0]
    assert stage["oracle"] == ATTACKS[name].oracle == "white-box"
    return suspect, lineage, stage


@pytest.mark.parametrize("name", ["finetune", "ftal", "ftll", "rtll", "rtal"])
def test_fine_tuning_variants_keep_fidelity_and_train_what_they_say(name, victim, bars_task):
    before = {k: v.clone() for k, v in victim.state_dict().items()}
    suspect, lineage, stage = run(name, FAST, victim, bars_task)
    assert lineage["fidelity"] > 0.8  # chance is 0.25
    assert lineage["queries"] == stage["queries"] == 0  # own labels: the victim is never queried
    assert stage["data"] == "bars-attacker" and stage["training"]["dataset"] == "bars-attacker"
    assert all(torch.equal(v, victim.state_dict()[k]) for k, v in before.items())  # the victim is untouched
    head_v, head_s = last_linear(victim), last_linear(suspect)
    changed = {k for k, v in suspect.state_dict().items() if not torch.equal(v, victim.state_dict()[k])}
    head_prefix = next(n for n, m in suspect.named_modules() if m is head_s) + "."
    head_names = {k for k in suspect.state_dict() if k.startswith(head_prefix)}
    assert head_names == {"net.12.weight", "net.12.bias"}  # cnn_small's last Linear
    if name in ("ftll", "rtll"):
        assert changed == head_names  # frozen layers and their BatchNorm statistics did not move
    else:
        assert changed > head_names
    if name.startswith("rt"):
        fresh_gap = (head_s.weight - head_v.weight).abs().mean()
        assert fresh_gap > 0.02  # re-initialised, not a nudge of the victim's head
    assert stage["reinitialised_last_layer"] == name.startswith("rt")


def test_finetune_on_substitute_data_uses_victim_labels_and_counts_queries(victim, bars_task):
    suspect, lineage, stage = run("finetune", FAST + ",data=mnist-digits,limit=300", victim, bars_task)
    assert stage["queries"] == lineage["queries"] == 300  # each substitute image labelled once by the victim
    assert stage["labels"] == "the victim's top-1 labels"
    assert stage["training"]["dataset"] == "mnist-digits->1x28x28 labelled by the victim"
    assert lineage["fidelity"] > 0.5


@pytest.mark.parametrize("name", ["finetune", "ftll", "rtal"])
def test_white_box_attacks_refuse_a_black_box_victim(name, victim, bars_task):
    spec = ATTACKS[name]
    black_box = victim_access(victim, "black-box")
    with pytest.raises(ModelproveError, match="white-box"):
        spec.steal(black_box, bars_task[1], config_from_pairs(spec.config, ["epochs=1"]))
    assert black_box.queries == 0


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_last_layer_is_the_head_in_every_architecture(arch):
    model = build_model(arch, 3, 7, (32, 32))
    head = last_linear(model)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    captured = []
    handle = head.register_forward_hook(lambda m, i, o: captured.append(o))
    logits = model(torch.rand(2, 3, 32, 32))
    handle.remove()
    assert torch.equal(captured[0], logits)  # the head's output IS the model's output


@pytest.mark.parametrize("name", ["finetune", "ftal", "ftll", "rtll", "rtal"])
@pytest.mark.parametrize("pair,field", [("epochs=0", "epochs"), ("lr=-1", "lr"), ("data=imagenet", "data"),
                                        ("augmentation=rotate", "augmentation"), ("limit=0", "limit")])
def test_fine_tuning_config_errors_name_the_field(name, pair, field):
    with pytest.raises(ModelproveError, match=rf"\.{field} must be"):
        config_from_pairs(ATTACKS[name].config, [pair])


def test_an_attack_needing_data_says_so(victim):
    with pytest.raises(ModelproveError, match="needs attacker data"):
        run_attack("ftal", victim, None)
    assert isinstance(victim_access(victim, "white-box"), WhiteBoxAccess)


def test_prune_reaches_its_sparsity_and_keeps_fidelity(victim, bars_task):
    suspect, lineage, stage = run("prune", "rate=0.8,iterations=2,finetune_epochs=1,batch_size=64", victim,
                                  bars_task)
    assert abs(stage["sparsity"] - 0.8) < 0.005
    assert all(abs(s - 0.8) < 0.01 for s in stage["layer_sparsity"].values())
    assert len(stage["layer_sparsity"]) == 4  # cnn_small: 2 conv + 2 linear
    assert stage["schedule"][-1] == 0.8 and len(stage["training"]) == 2
    assert stage["data"] == "bars-attacker" and lineage["queries"] == stage["queries"] == 0
    assert lineage["fidelity"] > 0.6
    weights = [m.weight for m in suspect.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert abs(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) - 0.8) < 0.005
    assert set(suspect.state_dict()) == set(victim.state_dict())  # masks removed: an ordinary model file


def test_prune_without_fine_tuning_needs_no_data(victim, bars_task):
    suspect, lineage = run_attack("prune:rate=0.5,iterations=1,finetune_epochs=0", victim, None, test=bars_task[2])
    stage = lineage["stages"][0]
    assert stage["data"] is None and stage["uses_data"] is False and stage["training"] == []
    assert abs(stage["sparsity"] - 0.5) < 0.005
    assert lineage["fidelity"] > 0.6  # magnitude pruning to 50% barely changes a small CNN


@pytest.mark.parametrize("pair,field", [("rate=1.0", "rate"), ("rate=0", "rate"), ("iterations=0", "iterations"),
                                        ("finetune_epochs=-1", "finetune_epochs"), ("lr=0", "lr")])
def test_prune_config_errors_name_the_field(pair, field):
    with pytest.raises(ModelproveError, match=rf"PruneConfig\.{field} must be"):
        config_from_pairs(ATTACKS["prune"].config, [pair])


def test_prune_refuses_a_black_box_victim(victim):
    with pytest.raises(ModelproveError, match="white-box"):
        ATTACKS["prune"].steal(victim_access(victim, "black-box"), None, ATTACKS["prune"].config())
