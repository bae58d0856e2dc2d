"""The default style transformer (Magenta's network from ONNX, tiled into 384x384 mosaics)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from modelprove.core.errors import DataError, ModelproveError
from modelprove.data.style import (
    MagentaStyleTransformer,
    StyleTransformer,
    bundled_style_path,
    load_style_image,
    make_style_transformer,
    mosaic_capacity,
)


@pytest.fixture(scope="module")
def transformer():
    return MagentaStyleTransformer(tile_scale=2.0)


def test_mosaic_capacity():
    assert mosaic_capacity(28, 28, tile_scale=1.0, gutter=2) == (384 // 32) ** 2 == 144
    assert mosaic_capacity(28, 28, tile_scale=2.0, gutter=2) == (384 // 60) ** 2 == 36
    assert mosaic_capacity(32, 32, tile_scale=1.0, gutter=0) == 144


def test_bundled_style_image():
    image = load_style_image("scream")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and min(image.shape[:2]) > 256
    assert bundled_style_path().name == "scream.jpg"
    with pytest.raises(DataError, match="not found"):
        load_style_image("/nowhere/style.png")


@pytest.mark.parametrize("channels", [1, 3])
def test_keeps_shape_range_and_channels(transformer, channels, bars_task):
    grey = bars_task[0].as_float(torch.arange(40))  # 40 > 36: two mosaic passes
    images = grey if channels == 1 else grey.expand(-1, 3, -1, -1).contiguous()
    out = transformer(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    # the style changes the picture substantially, but keeps the content's layout
    assert (out - images).abs().mean() > 0.05
    corr = np.corrcoef(out[:, 0].flatten().numpy(), images[:, 0].flatten().numpy())[0, 1]
    assert corr > 0.3


def test_deterministic_and_order_preserving(transformer, bars_task):
    images = bars_task[0].as_float(torch.arange(8))
    a, b = transformer(images), transformer(images)
    assert torch.equal(a, b)
    # each output belongs to its own input: stylising one image alone gives nearly the same tile
    alone = transformer(images[3:4])
    assert (alone[0] - a[3]).abs().mean() < (alone[0] - a[4]).abs().mean()


def test_rejects_bad_inputs(transformer):
    with pytest.raises(DataError, match="batch"):
        transformer(torch.rand(3, 28, 28))
    with pytest.raises(DataError, match="1- or 3-channel"):
        transformer(torch.rand(2, 2, 28, 28))
    with pytest.raises(DataError, match="do not fit"):
        MagentaStyleTransformer(tile_scale=20.0)(torch.rand(1, 1, 28, 28))
    with pytest.raises(ModelproveError, match="strength"):
        MagentaStyleTransformer(strength=0.0)


def test_registry_and_protocol():
    made = make_style_transformer("magenta", style_image="scream", tile_scale=1.5)
    assert isinstance(made, StyleTransformer) and made.tile_scale == 1.5
    with pytest.raises(ModelproveError, match="unknown style transformer 'adain'"):
        make_style_transformer("adain")
