"""The one trainer: it learns, it is reproducible per seed, and its config is checked."""

from __future__ import annotations

import pytest
import torch

from modelprove.core.errors import ModelproveError
from modelprove.models import build_model
from modelprove.training import TrainConfig, agreement, evaluate, train


def _model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("lenet5", 1, 4, (28, 28))


def test_learns_the_task(bars_task):
    defender, _, test = bars_task
    model = _model()
    before = evaluate(model, test)
    record = train(model, defender, TrainConfig(epochs=8, seed=0), show_progress=False)
    assert evaluate(model, test) > 0.9 > before + 0.3
    assert record.history[-1] < record.history[0] and len(record.history) == 8
    assert record.samples == len(defender) and record.config["epochs"] == 8
    assert not model.training  # left in eval mode


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_same_seed_same_weights_other_seed_other_weights(bars_task, optimizer):
    data = bars_task[0].subset(torch.arange(200))
    config = TrainConfig(epochs=1, seed=5, optimizer=optimizer, lr=0.01 if optimizer == "adam" else 0.05)
    a, b, c = _model(), _model(), _model()
    train(a, data, config, show_progress=False)
    train(b, data, config, show_progress=False)
    train(c, data, TrainConfig(**{**config.__dict__, "seed": 6}), show_progress=False)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))


def test_evaluate_and_agreement_by_hand(bars_task):
    test = bars_task[2]

    class Constant(torch.nn.Module):
        def __init__(self, label):
            super().__init__()
            self.label = label
            self.unused = torch.nn.Parameter(torch.zeros(1))  # predict_* reads the device from a parameter

        def forward(self, x):
            return torch.nn.functional.one_hot(torch.full((len(x),), self.label), 4).float()

    expected = (test.labels == 2).float().mean().item()
    assert evaluate(Constant(2), test) == pytest.approx(expected)
    assert agreement(Constant(2), Constant(2), test) == 1.0
    assert agreement(Constant(2), Constant(3), test) == 0.0


@pytest.mark.parametrize(
    "field, value, message",
    [("epochs", -1, "epochs"), ("batch_size", 0, "batch_size"), ("lr", 0.0, "lr"),
     ("optimizer", "rmsprop", "optimizer"), ("augmentation", "mixup", "unknown augmentation")],
)
def test_config_is_checked(field, value, message):
    with pytest.raises(ModelproveError, match=message):
        TrainConfig(**{field: value})


def test_empty_dataset_is_an_error(bars_task):
    with pytest.raises(ModelproveError, match="empty"):
        train(_model(), bars_task[0].subset(torch.arange(0)), TrainConfig(epochs=1), show_progress=False)


def test_students_learn_their_teacher_from_its_answers_alone(bars_task):
    """A fresh student fitted to a teacher's stored top-1 labels or probability vectors on the attacker's
    images agrees with the teacher far above chance on unseen images (training.students)."""
    from modelprove.models import predict_proba
    from modelprove.training.students import fit_student

    defender, attacker, test = bars_task
    torch.manual_seed(0)
    teacher = build_model("lenet5", 1, defender.num_classes, (28, 28))
    train(teacher, defender, TrainConfig(epochs=6, seed=0), show_progress=False)
    answers = predict_proba(teacher, attacker.as_float())
    for kind in ("label", "logits", "distill"):
        torch.manual_seed(1)
        student = build_model("lenet5", 1, defender.num_classes, (28, 28))
        fit_student(student, attacker, answers, kind, TrainConfig(epochs=6, seed=1), show_progress=False)
        assert agreement(student, teacher, test) > 0.8, kind
    with pytest.raises(ModelproveError, match="answers for"):
        fit_student(student, attacker, answers[:10], "label", TrainConfig(epochs=1), show_progress=False)
    with pytest.raises(ModelproveError, match="unknown student kind"):
        fit_student(student, attacker, answers, "telepathy", TrainConfig(epochs=1), show_progress=False)
