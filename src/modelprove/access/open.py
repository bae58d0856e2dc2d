"""Open a suspect from a file: a model file (white-box, or less on request) or an ONNX file (black-box),
and name every file a suspect loads from, so that a verdict records the hash of each."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import Tensor

from modelprove.access.levels import (
    BLACK_BOX,
    LABEL_ONLY,
    WHITE_BOX,
    BlackBoxAccess,
    LabelOnlyAccess,
    WhiteBoxAccess,
    check_level,
    restrict,
)
from modelprove.access.remote import is_remote, remote_access
from modelprove.core.errors import SuspectError
from modelprove.core.fileio import sha256_file
from modelprove.models import load_model, model_paths

ONNX_SUFFIX = ".onnx"


def open_suspect(
    path: str | Path,
    *,
    level: str | None = None,
    outputs: Literal["probabilities", "logits"] | None = None,
    budget: int | None = None,
    name: str | None = None,
    timeout: float | None = None,
    transcript: str | Path | None = None,
) -> LabelOnlyAccess:
    """The suspect at ``path`` at the highest access it offers, or at ``level``.

    ``NAME.safetensors``/``NAME.json``/``NAME.pt`` (a model file) offers white-box access and loads
    without unpickling; ``NAME.onnx`` offers black-box access through onnxruntime, its outputs taken
    as ``outputs`` (None: logits, as torch exports give, unless its first answers already are
    probability vectors, which is refused rather than softmaxed twice). The access's ``file_hashes``
    hold the sha256 of every file the suspect was loaded from (:func:`suspect_file_hashes`).
    ``http(s)://HOST:PORT/v2/models/NAME`` is a model behind an Open Inference Protocol server, at
    the level its metadata allows (:mod:`modelprove.access.remote`; ``timeout`` per request,
    ``transcript`` a file for the queries; its ``file_hashes`` hold the sha256 of its metadata).
    """
    if level is not None:
        check_level(level, "--access")
    if is_remote(str(path)):
        remote = remote_access(str(path), budget=budget, name=name, timeout=timeout, transcript=transcript)
        remote = restrict(remote, level) if level is not None else remote
        remote.file_hashes = {"suspect_metadata": remote.client.metadata_sha256}  # type: ignore[attr-defined]
        return remote
    path = Path(path)
    name = name or path.stem
    hashes = suspect_file_hashes(path)  # before loading: the verdict names what was read
    if path.suffix.lower() == ONNX_SUFFIX:
        if level == WHITE_BOX:
            raise SuspectError(
                "an ONNX file offers black-box access at most (its graph is not a modelprove architecture).",
                path=path,
                fix="verify black-box (--access black-box), or give the model as NAME.safetensors + NAME.json.",
            )
        access: LabelOnlyAccess = onnx_access(path, outputs=outputs, budget=budget, name=name)
    else:
        model, card = load_model(path)
        access = WhiteBoxAccess(model, card, name=name, source=str(path), budget=budget)
    access = restrict(access, level) if level is not None else access
    access.file_hashes = hashes
    return access


def suspect_files(path: str | Path) -> list[Path]:
    """Every file a suspect at ``path`` loads from, the main one first: an ONNX file and each external
    data file its tensors reference; a model file's weights (``NAME.safetensors`` or ``NAME.pt``) and
    card ``NAME.json``. Files that do not exist are listed too (opening the suspect reports them)."""
    path = Path(path)
    if path.suffix.lower() != ONNX_SUFFIX:
        return list(model_paths(path))
    if not path.is_file():
        return [path]
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own types for a file that is not ONNX
        raise SuspectError(f"not a readable ONNX file ({type(exc).__name__}: {exc}).", path=path) from None
    locations = dict.fromkeys(
        entry.value for tensor in _tensors(model.graph) if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data if entry.key == "location"
    )
    return [path, *(path.parent / location for location in locations)]


def suspect_file_hashes(path: str | Path) -> dict[str, str]:
    """``{"suspect_weights": sha256 of the main file, "suspect:NAME": sha256 of each file}`` for every
    file of :func:`suspect_files` that exists (NAME relative to the main file's directory)."""
    files = [file for file in suspect_files(path) if file.is_file()]
    if not files:
        return {}
    base = Path(path).parent
    hashes = {f"suspect:{_relative(file, base)}": sha256_file(file) for file in files}
    return {"suspect_weights": hashes[f"suspect:{_relative(files[0], base)}"], **hashes}


def _relative(file: Path, base: Path) -> str:
    try:
        return file.relative_to(base).as_posix()
    except ValueError:
        return file.as_posix()


def _tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of an ONNX graph: initializers, sparse ones, node attributes, and subgraphs'."""
    import onnx

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                yield attribute.t
            elif attribute.type == onnx.AttributeProto.TENSORS:
                yield from attribute.tensors
            elif attribute.type == onnx.AttributeProto.SPARSE_TENSOR:
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            elif attribute.type == onnx.AttributeProto.GRAPH:
                yield from _tensors(attribute.g)
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for subgraph in attribute.graphs:
                    yield from _tensors(subgraph)


def onnx_access(
    path: str | Path,
    *,
    outputs: Literal["probabilities", "logits"] | None = None,
    budget: int | None = None,
    name: str | None = None,
    num_classes: int | None = None,
) -> BlackBoxAccess:
    """Black-box access to an ONNX classifier taking float32 NCHW images in [0, 1]; ``outputs`` as in
    :func:`open_suspect`."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise SuspectError("no ONNX file here.", path=path)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise SuspectError(f"onnxruntime cannot open this file: {exc}", path=path) from exc
    inputs, outs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1:
        raise SuspectError(f"an image classifier has one input; this ONNX graph has {len(inputs)}.", path=path)
    in_shape, out_shape = inputs[0].shape, outs[0].shape
    if len(in_shape) != 4:
        raise SuspectError(
            f"the ONNX input {inputs[0].name!r} has shape {in_shape}; expected (N, C, H, W).", path=path
        )
    declared = out_shape[-1] if len(out_shape) == 2 and isinstance(out_shape[-1], int) else None
    classes = num_classes or declared
    if classes is None:
        raise SuspectError(
            f"the ONNX output {outs[0].name!r} has shape {out_shape}; cannot tell the number of classes.",
            path=path,
            fix="pass num_classes, or export with a fixed class dimension.",
        )
    input_shape = tuple(in_shape[1:]) if all(isinstance(v, int) for v in in_shape[1:]) else None
    fixed_batch = in_shape[0] if isinstance(in_shape[0], int) and in_shape[0] > 0 else None
    input_name = inputs[0].name

    def predict(batch: Tensor) -> np.ndarray:
        array = batch.numpy().astype(np.float32, copy=False)
        if fixed_batch is None:
            return session.run(None, {input_name: array})[0]
        # A graph exported for a fixed batch size gets padded batches of exactly that size.
        results = []
        for start in range(0, len(array), fixed_batch):
            chunk = array[start : start + fixed_batch]
            padded = np.concatenate([chunk, np.zeros((fixed_batch - len(chunk), *chunk.shape[1:]), np.float32)])
            results.append(session.run(None, {input_name: padded})[0][: len(chunk)])
        return np.concatenate(results)

    return BlackBoxAccess(predict, outputs=outputs, num_classes=int(classes), input_shape=input_shape,
                          name=name or path.stem, source=str(path), budget=budget)


__all__ = ["BLACK_BOX", "LABEL_ONLY", "WHITE_BOX", "onnx_access", "open_suspect", "suspect_file_hashes",
           "suspect_files"]
