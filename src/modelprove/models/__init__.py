"""Models layer: the architecture registry, the normalising ``Classifier``, model cards and the
one model-file format (``NAME.safetensors`` + ``NAME.json``)."""

from modelprove.models.architectures import (
    ARCHITECTURES,
    ArchitectureError,
    ArchSpec,
    build_architecture,
    register_architecture,
)
from modelprove.models.card import CARD_FORMAT, ModelCard, card_for
from modelprove.models.classifier import (
    Classifier,
    build_model,
    predict_labels,
    predict_logits,
    predict_proba,
)
from modelprove.models.modelfile import load_model, model_output_paths, model_paths, save_model
from modelprove.models.onnx_export import export_onnx

__all__ = [
    "ARCHITECTURES",
    "CARD_FORMAT",
    "ArchSpec",
    "ArchitectureError",
    "Classifier",
    "ModelCard",
    "build_architecture",
    "build_model",
    "card_for",
    "export_onnx",
    "load_model",
    "model_output_paths",
    "model_paths",
    "predict_labels",
    "predict_logits",
    "predict_proba",
    "register_architecture",
    "save_model",
]
