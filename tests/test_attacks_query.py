"""Query-only and adapted attacks (MOVE Sec. 6.1; CAE Sec. 5, App. A.5) on a tiny victim.

Each attack must: give a surrogate clearly more faithful to the victim than chance (1/4 here),
see the victim only at its oracle level, report exactly the queries its oracle counted, and train
on attacker data that shares no image with the defender's.
"""

from __future__ import annotations

import copy

import pytest
import torch

from modelprove.access import BLACK_BOX, LABEL_ONLY, LabelOnlyAccess
from modelprove.attacks import ATTACKS, get_attack, run_attack
from modelprove.attacks.base import victim_access
from modelprove.core.config import config_from_pairs
from modelprove.core.errors import ModelproveError
from modelprove.models import build_model, predict_labels
from modelprove.training import TrainConfig, agreement, train

MINE = {  # name: (family, oracle)
    "label_query": ("query-only", LABEL_ONLY), "logit_query": ("query-only", BLACK_BOX),
    "jagielski": ("query-only", BLACK_BOX), "papernot": ("query-only", LABEL_ONLY),
    "knockoff": ("query-only", BLACK_BOX), "knockoff_labels": ("query-only", LABEL_ONLY),
    "adversarial": ("adapted", LABEL_ONLY), "ground_truth": ("adapted", LABEL_ONLY),
}

CHANCE = 0.25  # four balanced classes


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train faster on one thread, and far faster when other jobs share the 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def victim(one_thread, bars_task):
    defender, _, _ = bars_task
    torch.manual_seed(0)
    model = build_model("cnn_small", 1, 4, (28, 28))
    train(model, defender, TrainConfig(epochs=3, seed=0), show_progress=False)
    return model.eval()


def _image_keys(data) -> set[bytes]:
    return {row.numpy().tobytes() for row in data.images}


def test_attacker_and_defender_data_share_no_image(bars_task):
    defender, attacker, _ = bars_task
    assert not _image_keys(defender) & _image_keys(attacker)


def test_the_tiny_victim_is_good_enough_to_steal_from(victim, bars_task):
    from modelprove.training import evaluate

    assert evaluate(victim, bars_task[2]) > 0.9


class Spy:
    """Wraps an attack's steal() to record the victim access run_attack hands it."""

    def __init__(self, steal):
        self.steal = steal
        self.access = None

    def __call__(self, victim, attacker_data, config):
        self.access = victim
        return self.steal(victim, attacker_data, config)


def _run(monkeypatch, attack: str, victim, bars_task, **kwargs):
    """run_attack with the stage's steal() spied on; returns (suspect, lineage, spy)."""
    import dataclasses

    _, attacker, test = bars_task
    name = attack.partition(":")[0]
    spy = Spy(ATTACKS[name].steal)
    monkeypatch.setitem(ATTACKS, name, dataclasses.replace(ATTACKS[name], steal=spy))
    suspect, lineage = run_attack(attack, victim, attacker, test=test, seed=0, **kwargs)
    return suspect, lineage, spy


@pytest.mark.parametrize("name", sorted(MINE))
def test_registry_entry_and_paper_setting(name):
    import importlib

    spec = get_attack(name)
    assert (spec.family, spec.oracle) == MINE[name]
    module = importlib.import_module(spec.steal.__module__)
    assert isinstance(module.PAPER_SETTING, str) and module.PAPER_SETTING
    assert spec.config().seed == 0  # every default config is valid and seeded


def test_a_label_only_api_is_enough_for_label_query(victim, bars_task):
    """A victim that only ever returns labels (no probabilities exist anywhere behind it)."""
    _, attacker, test = bars_task
    api = LabelOnlyAccess(lambda batch: predict_labels(victim, batch), num_classes=4, input_shape=(1, 28, 28))
    spec = get_attack("label_query")
    suspect, details = spec.steal(api, attacker, spec.config(epochs=1))
    assert api.queries == details["queries"] == len(attacker)
    assert agreement(suspect, victim, test) > 0.8


def test_the_oracle_budget_binds_an_attack(victim, bars_task):
    from modelprove.access import QueryBudgetError

    with pytest.raises(QueryBudgetError, match="budget of 799"):
        run_attack("label_query:epochs=1", victim, bars_task[1], budget=799)


def _check_access(spy, level: str) -> None:
    assert spy.access.level == level
    if level == LABEL_ONLY:
        assert type(spy.access) is LabelOnlyAccess and not hasattr(spy.access, "probabilities")
    assert not hasattr(spy.access, "model")  # no query-only attack holds the weights


def test_label_query_steals_through_labels_only(monkeypatch, victim, bars_task):
    _, attacker, _ = bars_task
    _, lineage, spy = _run(monkeypatch, "label_query:epochs=1", victim, bars_task)
    _check_access(spy, LABEL_ONLY)
    assert lineage["queries"] == len(attacker)  # every transfer-set image once, not once per epoch
    assert lineage["stages"][0]["data"] == attacker.name
    assert lineage["fidelity"] > 0.8 > CHANCE



# jagielski with 1 epoch reached fidelity 0.665-0.95 over 4 seeds of the bars task; 3 epochs 0.92-1.0.
# logit_query with 1 epoch 0.91-0.99 (with 3, once 0.79: its student overshoots).
@pytest.mark.parametrize("attack", ["logit_query:epochs=1", "jagielski:epochs=3"])
def test_probability_attacks_match_the_victims_outputs(monkeypatch, victim, bars_task, attack):
    _, attacker, _ = bars_task
    _, lineage, spy = _run(monkeypatch, attack, victim, bars_task)
    _check_access(spy, BLACK_BOX)
    assert lineage["queries"] == len(attacker)
    assert lineage["stages"][0]["data"] == attacker.name
    assert lineage["fidelity"] > 0.8


@pytest.mark.parametrize("attack", ["logit_query", "jagielski"])
def test_probability_attacks_refuse_a_label_only_victim(victim, bars_task, attack):
    label_only = victim_access(victim, LABEL_ONLY)
    spec = get_attack(attack)
    with pytest.raises(ModelproveError, match="needs black-box access"):
        spec.steal(label_only, bars_task[1], spec.config())
    assert label_only.queries == 0


def test_jagielski_softening_keeps_the_ranking_and_raises_entropy():
    from modelprove.training.students import soften

    p = torch.tensor([[0.9, 0.05, 0.03, 0.02], [0.0, 0.0, 1.0, 0.0]])
    assert torch.allclose(soften(p, 1.0), p, atol=1e-6)
    soft = soften(p, 3.0)
    assert torch.equal(soft.argmax(dim=1), p.argmax(dim=1))
    assert torch.allclose(soft.sum(dim=1), torch.ones(2))
    assert soft[0, 0] < p[0, 0] and soft[0, 3] > p[0, 3]



def test_papernot_queries_the_seed_set_then_only_new_points(monkeypatch, victim, bars_task):
    _, lineage, spy = _run(monkeypatch, "papernot:seed_per_class=5,rounds=2,epochs=3", victim, bars_task)
    _check_access(spy, LABEL_ONLY)
    stage = lineage["stages"][0]
    assert stage["seed_set"] == 4 * 5
    assert [r["transfer_set"] for r in stage["rounds"]] == [20, 40, 80]  # the set doubles every round
    assert lineage["queries"] == 80  # |S_0| · 2^rounds: old points are never sent again
    assert stage["data"] == bars_task[1].name
    assert lineage["fidelity"] > 0.7


def test_papernot_jacobian_step_stays_within_lambda_and_follows_the_gradient(victim, bars_task):
    from modelprove.attacks.papernot import PapernotConfig, jacobian_points, step_size

    images = bars_task[1].images[:64]
    labels = predict_labels(victim, images.float() / 255)
    moved = jacobian_points(victim, images, labels, 0.1)
    shift = (moved.float() - images.float()).abs() / 255
    assert shift.max() <= 0.1 + 0.5 / 255 and shift.mean() > 0.05  # most pixels move by λ, clipping aside
    before = torch.log_softmax(victim(images.float() / 255), 1).gather(1, labels[:, None])
    after = torch.log_softmax(victim(moved.float() / 255), 1).gather(1, labels[:, None])
    assert (after >= before - 1e-4).float().mean() > 0.9  # a step up the log-probability of O(x)
    config = PapernotConfig(lambda_step=0.1, tau=2)
    assert [step_size(config, r) for r in range(5)] == [0.1, 0.1, -0.1, -0.1, 0.1]



@pytest.mark.parametrize(("attack", "level", "settings", "floor"), [
    ("knockoff", BLACK_BOX, "limit=800,epochs=4,batch_size=32", 0.9),  # measured 0.97 (seeds 0-2)
    ("knockoff_labels", LABEL_ONLY, "limit=1000,epochs=5,batch_size=64", 0.5),  # measured 0.67-0.91
])
def test_knockoff_steals_with_other_domain_images(monkeypatch, victim, bars_task, attack, level, settings, floor):
    from modelprove.data.substitute import load_substitute

    defender = bars_task[0]
    _, lineage, spy = _run(monkeypatch, f"{attack}:{settings}", victim, bars_task)
    _check_access(spy, level)
    stage = lineage["stages"][0]
    assert lineage["queries"] == stage["transfer_set"] == int(settings.split(",")[0].split("=")[1])
    assert stage["data"] is None and stage["transfer_data"].startswith("mnist-digits")  # not the attacker's split
    digits = load_substitute("mnist-digits", (1, 28, 28), limit=stage["transfer_set"], seed=0)
    assert not _image_keys(digits) & _image_keys(defender)
    assert lineage["fidelity"] > floor



def _pgd_accuracy(model, data, eps: float) -> float:
    from modelprove.training.adversarial import pgd

    x, y = data.as_float()[:200], data.labels[:200]
    adversarial = pgd(model, x, y, eps, eps / 4, 10, torch.Generator().manual_seed(0))
    return (predict_labels(model, adversarial) == y).float().mean().item()


def test_pgd_stays_in_the_ball_and_raises_the_loss(victim, bars_task):
    from modelprove.training.adversarial import pgd

    x, y = bars_task[2].as_float()[:100], bars_task[2].labels[:100]
    model = copy.deepcopy(victim).train()  # pgd must run in eval mode and hand the model back as it found it
    for p in model.parameters():
        p.grad = None
    adversarial = pgd(model, x, y, 0.1, 0.03, 5, torch.Generator().manual_seed(0))
    assert model.training
    assert all(p.grad is None for p in model.parameters())  # only the images got gradients
    assert (adversarial - x).abs().max() <= 0.1 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    with torch.no_grad():
        clean_loss = torch.nn.functional.cross_entropy(victim(x), y)
        adversarial_loss = torch.nn.functional.cross_entropy(victim(adversarial), y)
    assert adversarial_loss > clean_loss + 1.0
    with pytest.raises(ModelproveError, match="eps"):
        pgd(victim, x, y, -0.1, 0.03, 5)


def test_adversarial_training_extracts_a_more_robust_surrogate(monkeypatch, victim, bars_task):
    _, attacker, test = bars_task
    suspect, lineage, spy = _run(monkeypatch, "adversarial:epochs=1,steps=3,step=0.04", victim, bars_task)
    _check_access(spy, LABEL_ONLY)
    assert lineage["queries"] == len(attacker)  # PGD examples are never sent to the victim
    assert lineage["stages"][0]["data"] == attacker.name
    assert lineage["fidelity"] > 0.8
    # what makes it a removal attack (CAE Fig. 4c): adversarial examples transfer less to it
    assert _pgd_accuracy(suspect, test, 0.1) > _pgd_accuracy(victim, test, 0.1) + 0.2



def test_ground_truth_queries_only_the_images_without_true_labels(monkeypatch, victim, bars_task):
    _, attacker, _ = bars_task
    _, lineage, spy = _run(monkeypatch, "ground_truth:p=0.75,epochs=1", victim, bars_task)
    _check_access(spy, LABEL_ONLY)
    stage = lineage["stages"][0]
    assert stage["ground_truth_labels"] == 600
    assert lineage["queries"] == 200 == len(attacker) - 600  # only the images actually sent
    assert stage["data"] == attacker.name
    assert lineage["fidelity"] > 0.8
    assert bars_task[1].labels.equal(attacker.labels)  # the attacker's own labels were not overwritten


def test_ground_truth_needs_data_of_the_victims_task(victim, bars_task):
    from modelprove.attacks.ground_truth import GroundTruthConfig, steal
    from modelprove.data.dataset import ImageDataset

    attacker = bars_task[1]
    three = ImageDataset(attacker.images, attacker.labels % 3, ["a", "b", "c"], "three-classes")
    access = victim_access(victim, LABEL_ONLY)
    with pytest.raises(ModelproveError, match="3 classes and the victim 4"):
        steal(access, three, GroundTruthConfig(epochs=1))
    assert access.queries == 0


BAD_CONFIGS = [  # (attack, bad key=value, the field the message must name)
    ("label_query", "epochs=0", "epochs"),
    ("label_query", "lr=0", "lr"),
    ("label_query", "arch=nonet", "arch"),
    ("label_query", "augmentation=blur", "augmentation"),
    ("logit_query", "batch_size=0", "batch_size"),
    ("jagielski", "temperature=0", "temperature"),
    ("papernot", "seed_per_class=0", "seed_per_class"),
    ("papernot", "rounds=-1", "rounds"),
    ("papernot", "lambda_step=0", "lambda_step"),
    ("papernot", "tau=-2", "tau"),
    ("knockoff", "data=imagenet", "data"),
    ("knockoff_labels", "limit=0", "limit"),
    ("adversarial", "eps=0", "eps"),
    ("adversarial", "step=0.5", "step"),  # larger than eps
    ("adversarial", "steps=0", "steps"),
    ("adversarial", "adversarial_weight=1.5", "adversarial_weight"),
    ("ground_truth", "p=1", "p"),
    ("ground_truth", "p=-0.1", "p"),
]


@pytest.mark.parametrize(("attack", "pair", "field"), BAD_CONFIGS)
def test_bad_config_names_the_field(attack, pair, field):
    with pytest.raises(ModelproveError, match=rf"\.{field} must"):
        config_from_pairs(get_attack(attack).config, [pair])


def test_a_multi_stage_chain_records_every_stage(victim, bars_task):
    """MOVE Table 7's chain shape: copy > logit-query retargeted to another architecture > zero-shot."""
    from modelprove.attacks import run_attack

    _, attacker, test = bars_task
    suspect, lineage = run_attack("copy>logit_query:arch=lenet5,epochs=1>zero_shot:iterations=2,batch_size=16",
                                  victim, attacker, test=test)
    assert [stage["attack"] for stage in lineage["stages"]] == ["copy", "logit_query", "zero_shot"]
    assert suspect.arch == "lenet5" and lineage["stages"][1]["params"]["arch"] == "lenet5"
    assert lineage["stages"][0]["queries"] == 0 and lineage["stages"][1]["queries"] == len(attacker)
    assert lineage["queries"] == sum(stage["queries"] for stage in lineage["stages"])
    assert 0.0 <= lineage["fidelity"] <= 1.0 and "test_accuracy" in lineage
