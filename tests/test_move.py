"""MOVE white-box end to end on a tiny synthetic task, with the real style transformer (< 60 s)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from modelprove.core.errors import ProtectionError, SuspectError
from modelprove.methods import METHODS, move
from modelprove.models import build_model, card_for, load_model
from modelprove.training import TrainConfig, train
from modelprove.training.gradients import GradientFeatureSpec, gradient_features


@pytest.fixture(scope="module")
def protection(tmp_path_factory, bars_task):
    defender, _, test = bars_task
    out = tmp_path_factory.mktemp("move") / "protection"
    config = move.MoveConfig(arch="lenet5", epochs=12, transformation_rate=0.1, meta_samples=40, meta_epochs=15, m=10)
    made = move.protect(defender, test, out, config)
    return out, made


def test_protection_directory_is_complete(protection):
    out, made = protection
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["method"] == "move"
    assert {"victim.safetensors", "victim.json", "benign.safetensors", "benign.json", "meta_classifier.safetensors",
            "transformed.safetensors", "style.jpg"} <= set(manifest["files"])
    assert manifest["dataset"]["transformed"] == 80  # gamma = 10% of 800
    assert manifest["results"]["victim_test_accuracy"] > 0.9  # the bars task is easy
    assert manifest["results"]["benign_test_accuracy"] > 0.9
    opened = move.open_protection(out)
    # verification pool and meta-training images are disjoint and together are D_t
    assert len(opened.pool_images) == 40
    assert manifest["config"]["transformation_rate"] == 0.1


def test_copy_is_flagged_and_benign_is_cleared(protection):
    out, made = protection
    opened = move.open_protection(out)
    victim, card = load_model(out / "victim.safetensors")
    stolen = move.verify(opened, copy.deepcopy(victim), card, suspect_name="copy")
    assert stolen.stolen and stolen.p_value < 0.01 and stolen.effect > 0.5
    benign, benign_card = load_model(out / "benign.safetensors")
    cleared = move.verify(opened, benign, benign_card, suspect_name="benign")
    assert not cleared.stolen and cleared.p_value == 1.0 and cleared.effect == 0.0


def test_verification_is_reproducible_per_seed(protection):
    out, _ = protection
    opened = move.open_protection(out)
    victim, card = load_model(out / "victim.safetensors")
    suspect = copy.deepcopy(victim)
    with torch.no_grad():
        for p in suspect.parameters():
            p.add_(0.05 * torch.randn_like(p))
    a = move.verify(opened, suspect, card, seed=3)
    b = move.verify(opened, suspect, card, seed=3)
    assert a.p_value == b.p_value and a.effect == b.effect


def test_wrong_architecture_is_a_clear_error(protection, bars_task):
    out, _ = protection
    defender = bars_task[0]
    other = build_model("cnn_small", 1, defender.num_classes, (28, 28))
    with pytest.raises(SuspectError, match="arch=lenet5.*arch=cnn_small"):
        move.verify(out, other, card_for(other, defender.classes), suspect_path="other.safetensors")


def test_tampered_protection_is_refused(protection, tmp_path):
    import shutil

    out, _ = protection
    clone = tmp_path / "clone"
    shutil.copytree(out, clone)
    data = bytearray((clone / "meta_classifier.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (clone / "meta_classifier.safetensors").write_bytes(bytes(data))
    with pytest.raises(ProtectionError, match="meta_classifier.safetensors"):
        move.open_protection(clone)


def test_registry_finds_move():
    spec = METHODS["move"]
    assert spec.access == "white-box" and spec.config is move.MoveConfig


def test_gradient_features_match_autograd(bars_task):
    defender = bars_task[0]
    torch.manual_seed(0)
    model = build_model("lenet5", 1, defender.num_classes, (28, 28))
    model.eval()
    images, labels = defender.as_float(torch.arange(3)), defender.labels[:3]
    spec = GradientFeatureSpec("none", signed=False)
    features = gradient_features(model, images, labels, spec)
    assert features.shape == (3, spec.dimension(model))
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(images[i : i + 1]), labels[i : i + 1]).backward()
        expected = torch.cat([p.grad.flatten() for p in spec.selected(model).values()])
        assert torch.allclose(features[i], expected, atol=1e-5)
    signs = gradient_features(model, images, labels, GradientFeatureSpec("spatial_max"))
    assert signs.dtype == torch.int8 and set(signs.unique().tolist()) <= {-1, 0, 1}
    assert signs.shape[1] == GradientFeatureSpec("spatial_max").dimension(model) < spec.dimension(model)
    # layer_sign_stats: per weight, the fractions of positive and of zero signs of the pooled gradient
    stats = gradient_features(model, images, labels, GradientFeatureSpec("layer_sign_stats"))
    assert stats.shape == (3, 2 * len(spec.selected(model)))
    start = 0
    for k, (_, count) in enumerate(GradientFeatureSpec("spatial_max").layout(model)):
        block = signs[:, start : start + count].float()
        assert torch.allclose(stats[:, 2 * k], (block > 0).float().mean(dim=1))
        assert torch.allclose(stats[:, 2 * k + 1], (block == 0).float().mean(dim=1))
        start += count


def test_layer_sign_stats_ignore_the_order_of_hidden_units(bars_task):
    """Permuting a hidden layer's units leaves the function and the sign statistics unchanged."""
    defender = bars_task[0]
    torch.manual_seed(1)
    model = build_model("cnn_small", 1, defender.num_classes, (28, 28)).eval()
    hidden, head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-2:]
    permuted = copy.deepcopy(model)
    p_hidden, p_head = [m for m in permuted.modules() if isinstance(m, torch.nn.Linear)][-2:]
    order = torch.randperm(hidden.out_features)
    with torch.no_grad():
        p_hidden.weight.copy_(hidden.weight[order])
        p_hidden.bias.copy_(hidden.bias[order])
        p_head.weight.copy_(head.weight[:, order])
    images, labels = defender.as_float(torch.arange(6)), defender.labels[:6]
    assert torch.allclose(model(images), permuted(images), atol=1e-5)
    stats = GradientFeatureSpec("layer_sign_stats")
    assert torch.allclose(gradient_features(model, images, labels, stats),
                          gradient_features(permuted, images, labels, stats), atol=1e-6)
    layout = GradientFeatureSpec("spatial_max")
    assert not torch.equal(gradient_features(model, images, labels, layout),
                           gradient_features(permuted, images, labels, layout))


class _Invert:
    """A user's own transformer: anything with a name that maps images in [0, 1] to images in [0, 1]."""

    name = "invert"

    def __call__(self, images):
        return 1.0 - images


def test_a_users_own_transformer_plugs_in(tmp_path, bars_task):
    defender, _, test = bars_task
    config = move.MoveConfig(arch="lenet5", epochs=6, benign_models=1, meta_samples=30, meta_epochs=10, m=5)
    made = move.protect(defender, test, tmp_path / "p", config, transformer=_Invert())
    manifest = json.loads((tmp_path / "p" / "manifest.json").read_text())
    assert manifest["config"]["transformer_used"] == {"transformer": "invert"}
    assert not any(name.startswith("style") for name in manifest["files"])
    # the transformed images stored are exactly T(x) of the chosen defender images, labels unchanged
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / "p" / "transformed.safetensors"))
    rows = [int((defender.indices == i).nonzero()) for i in stored["indices"].tolist()]
    assert torch.equal(stored["images"], 255 - defender.images[rows])
    assert torch.equal(stored["labels"], defender.labels[rows])
    assert made.results["victim_accuracy_on_transformed"] > made.results["benign_accuracy_on_transformed"]
