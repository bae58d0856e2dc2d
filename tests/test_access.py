"""Suspect access levels: what each exposes, query counting, budgets, output and input checks, ONNX."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelprove.access import (
    BLACK_BOX,
    LABEL_ONLY,
    WHITE_BOX,
    BlackBoxAccess,
    LabelOnlyAccess,
    QueryBudgetError,
    WhiteBoxAccess,
    open_suspect,
    require_access,
    restrict,
)
from modelprove.core.errors import SuspectError
from modelprove.models import build_model, card_for, export_onnx, predict_proba, save_model


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("cnn_small", 1, 4, (28, 28)).eval()


def images(n: int, shape=(1, 28, 28)) -> torch.Tensor:
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(n))


def test_levels_expose_only_what_they_offer(model):
    white = WhiteBoxAccess(model)
    black, label = restrict(white, BLACK_BOX), restrict(white, LABEL_ONLY)
    assert (white.level, black.level, label.level) == (WHITE_BOX, BLACK_BOX, LABEL_ONLY)
    assert hasattr(white, "model") and not hasattr(black, "model")
    assert hasattr(black, "probabilities") and not hasattr(label, "probabilities")
    x = images(6)
    assert torch.allclose(black.probabilities(x), predict_proba(model, x))
    assert torch.equal(label.labels(x), predict_proba(model, x).argmax(dim=1))
    with pytest.raises(SuspectError, match="needs white-box access.*offers only black-box"):
        restrict(black, WHITE_BOX)


def test_require_access_names_both_levels(model):
    label = WhiteBoxAccess(model, name="api").as_black_box().as_label_only()
    with pytest.raises(SuspectError, match="MOVE black-box needs black-box access .*api offers only label-only"):
        require_access(label, BLACK_BOX, "MOVE black-box")
    require_access(label, LABEL_ONLY, "CAE")  # enough for a label-only method


def test_queries_are_counted_per_image(model):
    access = BlackBoxAccess.from_model(model)
    access.probabilities(images(7))
    access.labels(images(5))
    assert access.queries == 12
    label = access.as_label_only()
    label.labels(images(1000))  # more than one internal batch
    assert label.queries == 1000 and access.queries == 12


def test_budget_is_enforced_with_the_count(model):
    access = BlackBoxAccess.from_model(model, budget=10)
    access.probabilities(images(8))
    with pytest.raises(QueryBudgetError, match="budget of 10 images .*8 used, this batch needs 5"):
        access.probabilities(images(5))
    assert access.queries == 8  # the refused batch was not sent
    access.labels(images(2))
    assert access.queries == 10


def _black_box(fn, **kw) -> BlackBoxAccess:
    return BlackBoxAccess(fn, num_classes=4, input_shape=(1, 28, 28), name="api", **kw)


def test_nan_outputs_are_refused():
    access = _black_box(lambda x: torch.full((len(x), 4), float("nan")))
    with pytest.raises(SuspectError, match="NaN or infinite values for 3 of 3"):
        access.probabilities(images(3))


def test_rows_must_sum_to_one_unless_declared_logits():
    logits = lambda x: torch.arange(4.0).repeat(len(x), 1)  # noqa: E731
    with pytest.raises(SuspectError, match="not probability vectors.*outputs='logits'"):
        _black_box(logits).probabilities(images(2))
    p = _black_box(logits, outputs="logits").probabilities(images(2))
    assert torch.allclose(p, torch.arange(4.0).softmax(0).repeat(2, 1))
    numpy_probs = _black_box(lambda x: np.full((len(x), 4), 0.25)).probabilities(images(2))  # arrays are fine
    assert numpy_probs.shape == (2, 4)


def test_wrong_output_shape_and_bad_labels_are_refused():
    with pytest.raises(SuspectError, match=r"shape \(3, 5\) for 3 images; expected \(3, 4\)"):
        _black_box(lambda x: torch.full((len(x), 5), 0.2)).probabilities(images(3))
    label = LabelOnlyAccess(lambda x: torch.full((len(x),), 7), num_classes=4, name="api")
    with pytest.raises(SuspectError, match="labels outside 0..3"):
        label.labels(images(2))


def test_wrong_input_shape_is_a_clear_error_not_a_torch_crash(model):
    access = WhiteBoxAccess(model, name="suspect")
    with pytest.raises(SuspectError, match="takes images of shape 1x28x28 .* uses 3x32x32"):
        access.check_input((3, 32, 32), 4)
    with pytest.raises(SuspectError, match="predicts 4 classes, but .* has 10"):
        access.check_input((1, 28, 28), 10)
    with pytest.raises(SuspectError, match="takes images of shape 1x28x28 but was sent 3x32x32"):
        access.probabilities(images(2, (3, 32, 32)))
    assert access.queries == 0


def test_a_failing_callable_is_reported_as_the_suspects_failure():
    def broken(x):
        raise RuntimeError("server said 500")

    with pytest.raises(SuspectError, match="api failed on a batch .*RuntimeError: server said 500"):
        _black_box(broken).probabilities(images(2))


def test_onnx_suspect_is_black_box_and_matches_the_model(model, tmp_path):
    path = export_onnx(model, tmp_path / "suspect.onnx")
    access = open_suspect(path)
    assert access.level == BLACK_BOX and access.input_shape == (1, 28, 28) and access.num_classes == 4
    x = images(9)
    assert torch.allclose(access.probabilities(x), predict_proba(model, x), atol=1e-5)
    assert access.queries == 9
    with pytest.raises(SuspectError, match="ONNX file offers black-box access at most"):
        open_suspect(path, level=WHITE_BOX)
    assert open_suspect(path, level=LABEL_ONLY).level == LABEL_ONLY


def test_model_file_opens_white_box_and_can_be_restricted(model, tmp_path):
    save_model(model, card_for(model), tmp_path / "m.safetensors")
    assert open_suspect(tmp_path / "m.safetensors").level == WHITE_BOX
    assert open_suspect(tmp_path / "m", level=BLACK_BOX, budget=3).budget == 3
    with pytest.raises(SuspectError, match="access must be one of"):
        open_suspect(tmp_path / "m", level="grey-box")
