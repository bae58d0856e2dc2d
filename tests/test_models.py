"""The models layer: architectures, the normalising classifier, model cards and safe model files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

from modelprove.core.errors import ModelFileError
from modelprove.models import (
    ARCHITECTURES,
    CARD_FORMAT,
    ModelCard,
    build_architecture,
    build_model,
    card_for,
    load_model,
    model_paths,
    predict_labels,
    predict_proba,
    save_model,
)

SHAPES = [(1, 28, 28, 10), (3, 32, 32, 10), (3, 40, 40, 7)]


@pytest.fixture(autouse=True)
def _fast_and_seeded():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


def test_registry_lists_all_six_architectures():
    assert set(ARCHITECTURES) == {"cnn_small", "lenet5", "mlp", "vgg_small", "resnet20", "resnet18"}
    assert all(spec.description for spec in ARCHITECTURES.values())


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize(("channels", "height", "width", "classes"), SHAPES)
def test_architecture_gives_logits_and_gradients(arch, channels, height, width, classes):
    model = build_model(arch, channels, classes, (height, width))
    batch = 2 if arch == "resnet18" else 4
    x = torch.rand(batch, channels, height, width)
    logits = model(x)
    assert logits.shape == (batch, classes)
    logits.logsumexp(dim=1).sum().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_cnn_small_is_small():
    params = sum(p.numel() for p in build_model("cnn_small", 1, 10, (28, 28)).parameters())
    assert 50_000 <= params <= 250_000
    # The adaptive pool keeps the head independent of the input size.
    assert params == sum(p.numel() for p in build_model("cnn_small", 1, 10, (64, 48)).parameters())


def test_unknown_architecture_lists_known_names():
    with pytest.raises(ModelFileError) as info:
        build_architecture("resnet9000", 1, 10, (28, 28))
    assert isinstance(info.value, ValueError)
    assert "resnet9000" in str(info.value)
    for name in ARCHITECTURES:
        assert name in str(info.value)


def test_too_small_input_is_refused():
    with pytest.raises(ValueError, match="at least 16x16"):
        build_model("cnn_small", 1, 10, (12, 12))


def test_normalisation_is_inside_the_model():
    model = build_model("lenet5", 2, 3, (16, 16), mean=[0.2, 0.4], std=[0.5, 0.25]).eval()
    x = torch.rand(3, 2, 16, 16)
    expected = model.net((x - torch.tensor([0.2, 0.4]).view(2, 1, 1)) / torch.tensor([0.5, 0.25]).view(2, 1, 1))
    torch.testing.assert_close(model(x), expected)
    # The card is the one record of the normalisation; the weights file holds learned tensors only.
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()
    with pytest.raises(ValueError, match="one value per channel"):
        build_model("lenet5", 2, 3, (16, 16), mean=[0.5], std=[0.25])


def test_predictions_are_probabilities_in_eval_mode():
    model = build_model("cnn_small", 1, 10, (28, 28)).train()
    x = torch.rand(5, 1, 28, 28)
    proba = predict_proba(model, x, batch_size=2)
    assert proba.shape == (5, 10) and not proba.requires_grad
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(5))
    # Batch-norm in eval mode: each image's prediction does not depend on its batch.
    torch.testing.assert_close(proba[:1], predict_proba(model, x[:1]))
    assert torch.equal(predict_labels(model, x), proba.argmax(dim=1))
    assert model.training, "the caller's training mode is restored"


def _trained_pair(tmp_path: Path, name: str = "victim"):
    model = build_model("cnn_small", 1, 3, (28, 28), mean=[0.3], std=[0.35])
    # A few steps so the BN running statistics differ from their initial values.
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.rand(8, 1, 28, 28)).logsumexp(dim=1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    card = card_for(model, ["a", "b", "c"], training={"epochs": 1, "seed": 0}, lineage={"kind": "victim"})
    return model.eval(), card, save_model(model, card, tmp_path / name)


def test_save_load_round_trip(tmp_path):
    model, card, weights = _trained_pair(tmp_path)
    assert weights == tmp_path / "victim.safetensors"
    assert (tmp_path / "victim.json").is_file()
    x = torch.rand(6, 1, 28, 28)
    for given in ("victim", "victim.safetensors", "victim.json"):
        loaded, loaded_card = load_model(tmp_path / given)
        assert not loaded.training
        assert torch.equal(loaded(x), model(x))
        assert loaded_card.weights_sha256 and len(loaded_card.weights_sha256) == 64
        assert loaded_card.to_dict() == {**card.to_dict(), "weights_sha256": loaded_card.weights_sha256}
    assert json.loads((tmp_path / "victim.json").read_text())["format"] == CARD_FORMAT


def test_model_paths_normalise_every_spelling(tmp_path):
    pair = (tmp_path / "m.v2.safetensors", tmp_path / "m.v2.json")
    assert model_paths(tmp_path / "m.v2") == pair
    assert model_paths(tmp_path / "m.v2.json") == pair
    assert model_paths(tmp_path / "m.pt") == (tmp_path / "m.pt", tmp_path / "m.json")


def _card_dict() -> dict:
    return card_for(build_model("cnn_small", 1, 10, (28, 28))).to_dict()


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("input_shape", [28, 28], "[channels, height, width] of positive integers"),
        ("input_shape", [1, 8, 8], "at least 16"),
        ("arch", "alexnet", "one of"),
        ("arch", ["cnn_small"], "one of"),
        ("num_classes", True, "integer >= 2"),
        ("classes", ["a", "b"], "num_classes=10"),
        ("mean", [0.5, 0.5], "1 finite numbers"),
        ("std", [0.0], "positive"),
        ("training", [], "JSON object"),
        ("weights_sha256", "abc", "64 lowercase hex"),
        ("format", "modelprove-model/0", CARD_FORMAT),
    ],
)
def test_card_validation_names_file_and_field(field, value, expected):
    bad = {**_card_dict(), field: value}
    with pytest.raises(ModelFileError) as info:
        ModelCard.from_dict(bad, "victim.json")
    message = str(info.value)
    assert message.startswith(f"victim.json: field '{field}'")
    assert expected in message


def test_card_missing_and_unknown_fields(tmp_path):
    card = _card_dict()
    del card["std"]
    with pytest.raises(ModelFileError, match=r"missing field\(s\) \['std'\]"):
        ModelCard.from_dict(card, "c.json")
    with pytest.raises(ModelFileError, match="unknown field.*'epochs'"):
        ModelCard.from_dict({**_card_dict(), "epochs": 3}, "c.json")
    assert ModelCard.from_dict(_card_dict(), "c.json") == ModelCard(**_card_dict())


def test_tampered_weights_fail_the_sha_check(tmp_path):
    _, _, weights = _trained_pair(tmp_path)
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF  # inside the last tensor's bytes: still a readable safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="weights do not match the card's sha256"):
        load_model(weights)


def test_missing_card_or_weights_names_the_missing_file(tmp_path):
    _, _, weights = _trained_pair(tmp_path)
    card_path = tmp_path / "victim.json"
    card_text = card_path.read_text()
    card_path.unlink()
    with pytest.raises(ModelFileError, match="model card not found") as info:
        load_model(weights)
    assert str(info.value).startswith(str(card_path))
    card_path.write_text(card_text)
    weights.unlink()
    with pytest.raises(ModelFileError, match="weights not found") as info:
        load_model(card_path)
    assert str(info.value).startswith(str(weights))
    with pytest.raises(ModelFileError, match="neither nowhere.safetensors nor nowhere.json exists"):
        load_model(tmp_path / "nowhere")


def test_weights_that_do_not_fit_the_card_name_the_keys(tmp_path):
    _, _, weights = _trained_pair(tmp_path)
    card_path = tmp_path / "victim.json"
    card = json.loads(card_path.read_text())
    card.update(arch="lenet5", weights_sha256="")
    card_path.write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not fit architecture 'lenet5' with input \\[1, 28, 28\\]") as info:
        load_model(weights)
    assert "missing net.0.weight" in str(info.value) or "wrong shape net.0.weight" in str(info.value)


def test_overwrite_is_refused_and_leaves_the_file_alone(tmp_path):
    _, card, weights = _trained_pair(tmp_path)
    before = (weights.read_bytes(), (tmp_path / "victim.json").read_bytes())
    other = build_model("cnn_small", 1, 3, (28, 28), mean=[0.3], std=[0.35])
    with pytest.raises(ModelFileError, match="overwrite=True"):
        save_model(other, card, tmp_path / "victim.json")
    assert (weights.read_bytes(), (tmp_path / "victim.json").read_bytes()) == before
    save_model(other, card, tmp_path / "victim", overwrite=True)
    assert weights.read_bytes() != before[0]
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(load_model(weights)[0](x), other.eval()(x))


def test_save_refuses_a_card_that_does_not_describe_the_model(tmp_path):
    model = build_model("cnn_small", 1, 3, (28, 28))
    card = card_for(build_model("lenet5", 1, 3, (28, 28)))
    with pytest.raises(ModelFileError, match="field 'arch' is 'lenet5'"):
        save_model(model, card, tmp_path / "m")
    assert not (tmp_path / "m.safetensors").exists()


@pytest.mark.parametrize("bare", [False, True], ids=["classifier", "bare-network"])
def test_plain_torch_state_dict_with_card_loads(tmp_path, bare):
    model, card, _ = _trained_pair(tmp_path)
    state = model.net.state_dict() if bare else model.state_dict()
    torch.save(state, tmp_path / "export.pt")
    (tmp_path / "export.json").write_text(json.dumps({**card.to_dict(), "weights_sha256": ""}))
    loaded, _ = load_model(tmp_path / "export.pt")
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    # A card that records a sha256 for the .pt file has it checked.
    (tmp_path / "export.json").write_text(json.dumps({**card.to_dict(), "weights_sha256": "0" * 64}))
    with pytest.raises(ModelFileError, match="weights do not match the card's sha256"):
        load_model(tmp_path / "export.pt")


def test_torch_state_dict_without_card_is_refused(tmp_path):
    torch.save(build_model("lenet5", 1, 10, (28, 28)).state_dict(), tmp_path / "lonely.pth")
    with pytest.raises(ModelFileError, match="lonely.json"):
        load_model(tmp_path / "lonely.pth")


class _Payload:
    """Unpickling this object creates a marker file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker = tmp_path / "pwned"
    state = {**build_model("lenet5", 1, 10, (28, 28)).state_dict(), "evil": _Payload(marker)}
    path = tmp_path / "suspect.pt"
    if writer == "torch.save":
        torch.save(state, path)
    else:
        with open(path, "wb") as handle:
            pickle.dump(state, handle)
    (tmp_path / "suspect.json").write_text(json.dumps(_card_dict()))
    # Sanity: the payload is live, so the check below would catch a real unpickling.
    pickle.loads(pickle.dumps(_Payload(marker)))
    assert marker.exists()
    marker.unlink()

    with pytest.raises(ModelFileError, match="refused to load suspect.pt: it is not a plain tensor state dict") as info:
        load_model(path)
    assert "never unpickles" in str(info.value) and "weights_only=False" not in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".pkl", ".pickle", ".joblib"])
def test_pickle_files_are_refused_outright(tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = tmp_path / f"model{suffix}"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError, match="never unpickles"):
        load_model(path)
    assert not marker.exists()


def test_onnx_is_pointed_to_black_box_access(tmp_path):
    with pytest.raises(ModelFileError, match="black-box"):
        load_model(tmp_path / "suspect.onnx")
