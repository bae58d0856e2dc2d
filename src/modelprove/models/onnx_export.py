"""Export a model to ONNX, so it can be served or verified as a black-box suspect by any runtime."""

from __future__ import annotations

import io
import logging
import warnings
from pathlib import Path

import torch

from modelprove.core.errors import ModelFileError
from modelprove.core.fileio import atomic_write_bytes
from modelprove.models.classifier import Classifier


def export_onnx(model: Classifier, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model`` as ONNX: input ``images`` (N, C, H, W) float32 in [0, 1], output ``logits`` (N, K).

    Normalisation is inside the graph, as it is inside the model.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        raise ModelFileError("an ONNX export needs a path ending in .onnx.", path=path)
    if path.exists() and not overwrite:
        raise ModelFileError("a file already exists here; refusing to overwrite it.", path=path,
                             fix="pass overwrite=True, or choose another path.",
                             cli_fix="pass --force, or choose another --onnx.")
    buffer = io.BytesIO()
    dummy = torch.zeros(1, model.in_channels, *model.input_size)
    was_training = model.training
    model.eval()
    onnx_logger = logging.getLogger("torch.onnx")
    level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)  # "torchvision is not installed" notices are irrelevant here
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # torch.export-based exporter (onnxscript): the TorchScript one cannot export cnn_small's
            # adaptive pooling of 7x7 maps to 4x4.
            torch.onnx.export(model, (dummy,), buffer, verbose=False, input_names=["images"],
                              output_names=["logits"], dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    finally:
        model.train(was_training)
        onnx_logger.setLevel(level)
    atomic_write_bytes(path, buffer.getvalue())
    return path
