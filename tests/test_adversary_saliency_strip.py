"""Grad-CAM, the saliency defence and STRIP (adversary/saliency.py, adversary/strip.py; MOVE Sec. 7.3.2-7.3.3)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from modelprove.adversary.saliency import (
    SaliencyConfig,
    grad_cam,
    mass_share,
    purifying_access,
    remove_region,
    trigger_region,
)
from modelprove.adversary.strip import StripConfig, strip_entropy, strip_filtered_access
from modelprove.core.errors import ModelproveError
from modelprove.data.style import stamp_patch
from modelprove.methods.badnets import poison_badnets
from modelprove.methods.common import fresh_model
from modelprove.models import predict_proba
from modelprove.training import TrainConfig, train

SIZE = 28
PATCH = 3
TARGET = 0


def corner(size: int, margin: int = 0) -> torch.Tensor:
    """The trigger's bottom-right square, grown by ``margin`` pixels."""
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[SIZE - size - margin:, SIZE - size - margin:] = True
    return region


class RegionOnly(nn.Module):
    """Two bias-free convolutions of the input inside ``region`` only: the output depends on nothing else,
    and the second convolution's maps are zero beyond the region grown by its 2-pixel receptive field."""

    def __init__(self, region: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", region.float())
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.ReLU())
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * self.mask).mean(dim=(2, 3)))


def test_grad_cam_of_a_model_reading_one_region_puts_its_mass_there(single_thread):
    region = torch.zeros(SIZE, SIZE, dtype=torch.bool)
    region[16:26, 19:27] = True  # off-centre and not square: a transposed or flipped map would miss it
    grown = torch.zeros_like(region)
    grown[14:28, 17:28] = True
    torch.manual_seed(0)
    model = RegionOnly(region)
    images = torch.rand(64, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    maps = grad_cam(model, images)
    assert maps.shape == (64, SIZE, SIZE) and (maps >= 0).all()
    live = maps.flatten(1).sum(1) > 0
    assert live.sum() >= 16  # for the others the predicted class's weights are negative everywhere
    assert mass_share(maps[live], grown).min() > 0.999


def test_saliency_config_and_layer_are_checked():
    with pytest.raises(ModelproveError, match="top_fraction"):
        SaliencyConfig(top_fraction=0)
    with pytest.raises(ModelproveError, match="agreement"):
        SaliencyConfig(agreement=1.5)
    with pytest.raises(ModelproveError, match="grow"):
        SaliencyConfig(grow=-1)
    model = RegionOnly(corner(3))
    with pytest.raises(ModelproveError, match="no module"):
        grad_cam(model, torch.rand(2, 1, SIZE, SIZE), layer="nope")


@pytest.fixture(scope="module")
def backdoored(bars_task, single_thread):
    """A cnn_small trained on the bars task with BadNets' trigger planted (20% of the rows relabelled)."""
    defender, attacker, test = bars_task
    poisoned, _ = poison_badnets(defender, 0.2, TARGET, PATCH, seed=0)
    model = fresh_model("cnn_small", defender, 0)
    train(model, poisoned, TrainConfig(epochs=6, lr=0.05, augmentation="none", seed=0), show_progress=False)
    clean = test.as_float()[test.labels != TARGET][:60]
    return model.eval(), clean, stamp_patch(clean, PATCH), attacker.as_float()[:200]


def test_the_planted_trigger_is_learned(backdoored):
    model, clean, triggered, _ = backdoored
    assert (predict_proba(model, triggered).argmax(1) == TARGET).float().mean() > 0.9


def test_grad_cam_and_the_trigger_region_find_a_planted_trigger(backdoored):
    model, clean, triggered, _ = backdoored
    near = corner(PATCH, margin=3)
    on_trigger = mass_share(grad_cam(model, triggered), near).mean()
    on_clean = mass_share(grad_cam(model, clean), near).mean()
    area = near.float().mean()  # 36 of 784 pixels
    assert on_trigger > 1.5 * area and on_trigger > 2.5 * on_clean
    region = trigger_region(model, triggered, SaliencyConfig(top_fraction=0.03, agreement=0.5))
    assert region.any() and (region & near).sum() >= 0.5 * region.sum()
    grown = trigger_region(model, triggered, SaliencyConfig(top_fraction=0.03, agreement=0.5, grow=2))
    assert (grown & region).equal(region) and grown.sum() > region.sum()


def test_purifying_access_fills_the_region_and_counts_queries(backdoored):
    model, clean, triggered, _ = backdoored
    region = corner(PATCH, margin=1)
    access = purifying_access(model, SaliencyConfig(fill=0.0), region)
    answers = access.probabilities(triggered)
    assert access.queries == len(triggered)
    assert torch.allclose(answers, predict_proba(model, remove_region(triggered, region, 0.0)))
    assert (answers.argmax(1) == TARGET).float().mean() < 0.5  # the trigger is gone
    per_query = purifying_access(model, SaliencyConfig(top_fraction=0.05))
    assert per_query.probabilities(clean[:5]).shape == (5, 4) and per_query.queries == 5
    with pytest.raises(ModelproveError, match="shape"):
        purifying_access(model, region=torch.ones(5, 5, dtype=torch.bool))


def test_strip_entropy_is_low_for_a_planted_trigger(backdoored):
    model, clean, triggered, overlays = backdoored
    config = StripConfig(overlays=16)
    on_trigger = strip_entropy(model, triggered, overlays, config)
    on_clean = strip_entropy(model, clean, overlays, config)
    assert on_trigger.shape == on_clean.shape == (len(clean),)
    assert on_trigger.mean() < 0.5 * on_clean.mean()


def test_strip_filter_answers_differently_only_on_flagged_queries_and_counts_them(backdoored):
    model, clean, triggered, overlays = backdoored
    calibration = overlays[:60]  # clean inputs that set the boundary
    access = strip_filtered_access(model, overlays, StripConfig(overlays=16, frr=0.2), calibration=calibration)
    batch = torch.cat([clean[:30], triggered[:30]])
    answers = access.probabilities(batch)
    flagged, _ = access.strip.flags(batch)
    truth = predict_proba(model, batch)
    assert access.queries == len(batch) and access.flagged == int(flagged.sum())
    assert torch.allclose(answers[~flagged], truth[~flagged])
    assert not torch.allclose(answers[flagged], truth[flagged])
    assert torch.allclose(answers.sum(1), torch.ones(len(batch)), atol=1e-5)
    assert flagged.any() and (~flagged).any()
    assert flagged[30:].float().mean() >= flagged[:30].float().mean()  # triggers at least as often as clean images
    uniform = strip_filtered_access(model, overlays, StripConfig(overlays=16, frr=0.2, response="uniform"),
                                    calibration=calibration)
    answered = uniform.probabilities(triggered[:10])
    assert torch.allclose(answered[uniform.strip.flags(triggered[:10])[0]], torch.full((1, 4), 0.25))
    hiding = strip_filtered_access(model, overlays, StripConfig(overlays=16, frr=0.2, response="suppress"),
                                   calibration=calibration)
    hidden = hiding.probabilities(triggered[:10])
    was_flagged = hiding.strip.flags(triggered[:10])[0]
    assert was_flagged.any() and (hidden[was_flagged][:, TARGET] < 1e-6).all()
    assert torch.allclose(hidden.sum(1), torch.ones(10), atol=1e-5)
    with pytest.raises(ModelproveError, match="frr"):
        StripConfig(frr=0)
