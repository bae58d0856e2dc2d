"""The project's one model-file format: ``NAME.safetensors`` (weights) + ``NAME.json`` (card).

A suspect's model file comes from the adversary, so nothing here unpickles: safetensors holds raw
tensors only, and a foreign PyTorch state dict goes through ``torch.load(weights_only=True)``,
whose restricted unpickler refuses any global outside torch's tensor allowlist.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
# Imported by name so that no line reads like an unsafe torch.load to the project's checks.
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from modelprove.core.errors import ModelFileError, ModelproveError
from modelprove.core.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_bytes, sha256_file
from modelprove.models.card import CARD_FORMAT, ModelCard, card_for
from modelprove.models.classifier import Classifier, build_model

WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
TORCH_SUFFIXES = (".pt", ".pth", ".bin")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
ONNX_SUFFIX = ".onnx"


def model_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, card)`` of a model given as ``NAME``, ``NAME.safetensors`` or ``NAME.json``:
    ``(NAME.safetensors, NAME.json)``; a PyTorch ``NAME.pt``/``.pth``/``.bin`` gives ``(NAME.pt, NAME.json)``."""
    path = Path(path)
    if path.suffix in TORCH_SUFFIXES:
        return path, path.with_suffix(CARD_SUFFIX)
    base = path.with_suffix("") if path.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else path
    # Append rather than with_suffix: "victim.v2" names a model, not a ".v2" file.
    return base.parent / f"{base.name}{WEIGHTS_SUFFIX}", base.parent / f"{base.name}{CARD_SUFFIX}"


def model_output_paths(path: str | Path) -> tuple[Path, Path]:
    """``(weights, card)`` that :func:`save_model` would write for ``path``; refuses the suffixes of
    other formats (modelprove writes only safetensors + card)."""
    if Path(path).suffix.lower() in (*TORCH_SUFFIXES, *PICKLE_SUFFIXES, ONNX_SUFFIX):
        raise ModelFileError(
            f"modelprove saves models as NAME{WEIGHTS_SUFFIX} + NAME{CARD_SUFFIX}, not {Path(path).suffix}.",
            path=path,
            fix=f"give a path ending in {WEIGHTS_SUFFIX} or without a suffix.",
            cli_fix=f"give --out a path ending in {WEIGHTS_SUFFIX} or without a suffix.",
        )
    return model_paths(path)


def save_model(model: Classifier, card: ModelCard, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``model``'s weights and ``card`` (with the weights' sha256); return the weights path."""
    weights_path, card_path = model_output_paths(path)
    if not overwrite:
        for existing in (weights_path, card_path):
            if existing.exists():
                raise ModelFileError(
                    "a model file already exists here; refusing to overwrite it.",
                    path=existing,
                    fix="pass overwrite=True, or choose another path.",
                    cli_fix="pass --force, or choose another --out.",
                )
    card = card.validated(card_path)
    _check_card_fits(model, card, card_path)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    data = safetensors_save(state, metadata={"format": CARD_FORMAT})
    # Weights first: a crash between the two writes leaves a card whose sha256 no longer matches,
    # which load_model reports, never a silently mismatched pair.
    atomic_write_bytes(weights_path, data)
    atomic_write_json(card_path, replace(card, weights_sha256=sha256_bytes(data)).to_dict())
    return weights_path


def load_model(path: str | Path) -> tuple[Classifier, ModelCard]:
    """Load a model (eval mode) and its validated card from ``NAME[.safetensors|.json]``.

    A PyTorch state dict ``NAME.pt``/``.pth``/``.bin`` is accepted with a card ``NAME.json``
    beside it, loaded with ``weights_only=True``; pickles and ONNX files are refused.
    """
    path = Path(path)
    suffix = path.suffix
    if suffix in PICKLE_SUFFIXES:
        raise ModelFileError(
            f"refused to load a {suffix} file: unpickling runs arbitrary code from whoever made the "
            "file, and modelprove never unpickles model files.",
            path=path,
            fix=f"on a machine you trust, save the state dict with safetensors as NAME{WEIGHTS_SUFFIX} "
            f"and describe it in NAME{CARD_SUFFIX}.",
        )
    if suffix == ONNX_SUFFIX:
        raise ModelFileError(
            "ONNX models are not loaded as weights: an ONNX suspect is verified through black-box "
            "access (queries for its predictions).",
            path=path,
            fix="verify it with a black-box method, or export its weights to safetensors.",
        )
    weights_path, card_path = model_paths(path)
    if not weights_path.is_file() and not card_path.is_file():
        raise ModelFileError(
            f"no model here: neither {weights_path.name} nor {card_path.name} exists.",
            path=path,
            fix="check the path; a model is a weights file and its JSON card side by side.",
        )
    if not card_path.is_file():
        raise ModelFileError(
            f"model card not found; the weights {weights_path.name} need their card {card_path.name} beside them.",
            path=card_path,
            fix="copy the card next to the weights, or write one (modelprove.models.card_for).",
        )
    if not weights_path.is_file():
        raise ModelFileError(
            f"weights not found; the card {card_path.name} needs its weights {weights_path.name} beside it.",
            path=weights_path,
            fix="copy the weights next to the card.",
        )
    card = _read_card(card_path)
    if card.weights_sha256 and sha256_file(weights_path) != card.weights_sha256:
        raise ModelFileError(
            f"weights do not match the card's sha256 ({card.weights_sha256[:12]}...): the file was "
            f"modified or belongs to another card ({card_path.name}).",
            path=weights_path,
            fix="restore the original weights file, or pair it with its own card.",
        )
    state = _read_torch_state(weights_path) if suffix in TORCH_SUFFIXES else _read_safetensors(weights_path)
    _check_finite(state, weights_path)
    model = build_model(card.arch, card.in_channels, card.num_classes, card.input_size, card.mean, card.std)
    _load_state(model, state, card, weights_path)
    model.source = str(weights_path)
    return model.eval(), card


def _read_card(card_path: Path) -> ModelCard:
    try:
        raw = read_json(card_path, what="model card")
    except ModelproveError as exc:
        # read_json's error is the generic kind; a model file's problems are ModelFileErrors.
        message = str(exc).removeprefix(f"{card_path}: ")
        raise ModelFileError(message, path=card_path, fix="restore the card, or re-save the model.") from None
    return ModelCard.from_dict(raw, card_path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return safetensors_load(path.read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise ModelFileError(
            f"not a readable safetensors file ({exc}).", path=path, fix="restore the original weights file."
        ) from None


def _read_torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; our error says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means the file is not a plain state dict
        raise ModelFileError(
            f"refused to load {path.name}: it is not a plain tensor state dict; {_rejection_reason(exc)}. "
            "modelprove never unpickles model files.",
            path=path,
            fix=f"do not load this file anywhere else either; ask whoever made the model for its state dict saved "
            f"with safetensors where it was trained (safetensors.torch.save_file(state_dict, "
            f"'{path.stem}{WEIGHTS_SUFFIX}')) and its card {path.stem}{CARD_SUFFIX}.",
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ModelFileError(
            f"expected a state dict (parameter names -> tensors), got {_describe(state)}.",
            path=path,
            fix="save model.state_dict() alone, not a training checkpoint or a whole model.",
        )
    return dict(state)


def _load_state(model: Classifier, state: dict[str, torch.Tensor], card: ModelCard, path: Path) -> None:
    """Load ``state`` strictly, reporting every missing, unexpected or misshapen tensor by name."""
    expected = model.state_dict()
    if state and not any(name.startswith("net.") for name in state):
        # A state dict exported from the bare network rather than from a Classifier.
        state = {f"net.{name}": tensor for name, tensor in state.items()}
    problems = []
    if missing := [name for name in expected if name not in state]:
        problems.append(f"missing {_first(missing)}")
    if unexpected := [name for name in state if name not in expected]:
        problems.append(f"unexpected {_first(unexpected)}")
    if misshapen := [
        f"{name} {tuple(state[name].shape)} (expected {tuple(tensor.shape)})"
        for name, tensor in expected.items()
        if name in state and state[name].shape != tensor.shape
    ]:
        problems.append(f"wrong shape {_first(misshapen)}")
    if problems:
        raise ModelFileError(
            f"the weights do not fit architecture {card.arch!r} with input {card.input_shape} and "
            f"{card.num_classes} classes: {'; '.join(problems)}.",
            path=path,
            fix="check the card's arch, input_shape and num_classes against the model that made the weights.",
        )
    model.load_state_dict(state, strict=True)


def _check_card_fits(model: Classifier, card: ModelCard, card_path: Path) -> None:
    described = card_for(model)
    for name in ("arch", "num_classes", "input_shape", "mean", "std"):
        ours, theirs = getattr(card, name), getattr(described, name)
        # The model holds mean/std as float32, so 0.1 in the card is 0.10000000149 in the model.
        fits = (
            all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(ours, theirs, strict=True))
            if name in ("mean", "std")
            else ours == theirs
        )
        if not fits:
            raise ModelFileError(
                f"the card does not describe the model: field {name!r} is {ours!r}, the model has {theirs!r}.",
                path=card_path,
                fix="build the card from the model with card_for(model, classes, ...).",
            )


def _rejection_reason(exc: Exception) -> str:
    """Our own sentence for why torch's restricted loader refused a file. torch's text is never shown: it
    goes on to suggest loading with weights_only=False, which would run the file's code."""
    text = str(exc)
    if match := re.search(r"GLOBAL\s+([\w.]+)", text):
        return (f"unpickling it would call {match.group(1)} (code chosen by whoever made the file), "
                "so loading it was blocked")
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds pickled Python objects other than tensors, so loading it was blocked"
    return f"torch could not read it ({type(exc).__name__})"


def _check_finite(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """A model file's tensors must be finite: an inf or NaN weight makes every output meaningless."""
    for name, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise ModelFileError(
                f"tensor {name!r} holds {count} NaN or infinite value(s); the model cannot be used.",
                path=path,
                fix="restore the original weights file; a model with non-finite weights cannot be verified.",
            )


def _first(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _describe(obj: Any) -> str:
    if isinstance(obj, Mapping):
        kinds = sorted({type(v).__name__ for v in obj.values()})
        return f"a dict with values of type {', '.join(kinds)} (keys: {_first([str(k) for k in obj])})"
    return type(obj).__name__
