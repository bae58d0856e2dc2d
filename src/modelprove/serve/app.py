"""An Open Inference Protocol (KServe v2) REST server for one image classifier, as a FastAPI app.

The endpoints every conformant client (Triton's, KServe's, MLServer's, modelprove's own) expects:

    GET  /v2/health/live, /v2/health/ready, /v2/models/{name}/ready
    GET  /v2                                   server metadata
    GET  /v2/models/{name}[/versions/1]        model metadata: inputs, outputs (name, datatype, shape)
    POST /v2/models/{name}[/versions/1]/infer  JSON tensors in, JSON tensors out
    GET  /v2/models/{name}/stats               Triton's statistics extension (counts only)

Errors are ``{"error": "..."}`` with a 4xx/5xx status, as the protocol says.

The output mode is the defence a real prediction API applies, applied here, server-side, before
anything leaves the process (:class:`OutputMode`). The server advertises it in the model metadata,
in the ``parameters`` object the protocol lets each tensor and the model carry (MLServer's
metadata has the same fields): each output says ``content`` ("probabilities", "logits", "labels"
or "classification"), ``num_classes``, and ``decimals`` (rounded) or ``k`` (top-k); the model's
``parameters`` hold ``max_batch_size`` and ``output_mode``. A client that ignores them still reads
ordinary OIP tensors: FP32 (N, K) probabilities or logits, INT64 (N,) labels, or BYTES (N, k)
"value:index" strings in the format of Triton's classification extension.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from modelprove.core.errors import ModelproveError

INPUT_NAME = "images"
DATATYPES = {"FP32": np.float32, "FP64": np.float64}  # input datatypes the server accepts
TEST_FAULTS = "MODELPROVE_SERVE_TEST_FAULTS"  # test-only: "die_after=N,delay=SECONDS"
_TINY = float(np.finfo(np.float32).tiny)  # log of a probability that underflowed to 0 stays finite


class ServeError(ModelproveError):
    """A server that cannot start as asked (bad output mode, rate limit, model)."""


@dataclass(frozen=True)
class OutputMode:
    """What the API returns: ``probabilities``, ``logits``, ``label`` (top-1 only), ``top-k`` (the k
    most probable classes with their probabilities) or ``rounded`` (probabilities to ``decimals``)."""

    kind: str
    k: int | None = None
    decimals: int | None = None

    @classmethod
    def parse(cls, text: str) -> "OutputMode":
        kind, _, value = text.strip().partition(":")
        if kind in ("probabilities", "logits", "label") and not value:
            return cls(kind)
        if kind in ("top-k", "rounded") and value.isdigit():
            number = int(value)
            if kind == "top-k" and number >= 1:
                return cls(kind, k=number)
            if kind == "rounded" and 0 <= number <= 8:
                return cls(kind, decimals=number)
        raise ServeError(f"unknown output mode {text!r}.",
                         fix="use probabilities, logits, label, top-k:K (K >= 1) or rounded:D (0 <= D <= 8).")

    def __str__(self) -> str:
        return {"top-k": f"top-k:{self.k}", "rounded": f"rounded:{self.decimals}"}.get(self.kind, self.kind)

    def output_metadata(self, num_classes: int) -> dict[str, Any]:
        """The output tensor's OIP metadata, with the ``parameters`` that say what it holds."""
        if self.kind == "label":
            return {"name": "label", "datatype": "INT64", "shape": [-1],
                    "parameters": {"content": "labels", "num_classes": num_classes}}
        if self.kind == "top-k":
            k = min(self.k or 1, num_classes)
            return {"name": "top_k", "datatype": "BYTES", "shape": [-1, k],
                    "parameters": {"content": "classification", "k": k, "num_classes": num_classes}}
        parameters: dict[str, Any] = {"content": "logits" if self.kind == "logits" else "probabilities",
                                      "num_classes": num_classes}
        if self.kind == "rounded":
            parameters["decimals"] = self.decimals
        return {"name": "logits" if self.kind == "logits" else "probabilities", "datatype": "FP32",
                "shape": [-1, num_classes], "parameters": parameters}

    def apply(self, probabilities: np.ndarray) -> tuple[list[int], str, list[Any]]:
        """(shape, datatype, flat data) of the output for ``probabilities`` (N, K): the defence."""
        n, classes = probabilities.shape
        if self.kind == "label":
            return [n], "INT64", probabilities.argmax(axis=1).astype(int).tolist()
        if self.kind == "top-k":
            k = min(self.k or 1, classes)
            order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            data = [f"{np.format_float_positional(probabilities[i, j], unique=True)}:{j}"
                    for i in range(n) for j in order[i]]
            return [n, k], "BYTES", data
        if self.kind == "logits":
            return [n, classes], "FP32", np.log(np.maximum(probabilities, _TINY)).ravel().tolist()
        if self.kind == "rounded":
            return [n, classes], "FP32", np.round(probabilities.astype(np.float64), self.decimals).ravel().tolist()
        return [n, classes], "FP32", probabilities.ravel().tolist()


@dataclass
class ServedModel:
    """The model behind the API: ``predict`` maps float32 images (N, C, H, W) in [0, 1] to probability
    vectors (N, K)."""

    name: str
    predict: Callable[[np.ndarray], np.ndarray]
    input_shape: tuple[int, ...]
    num_classes: int
    platform: str = "modelprove"
    source: str = ""


class RateLimiter:
    """A token bucket: ``rate`` requests per second, bursts of up to ``max(1, rate)``."""

    def __init__(self, rate: float):
        self.rate, self.capacity = rate, max(1.0, rate)
        self.tokens, self.stamp = self.capacity, time.monotonic()
        self.lock = threading.Lock()

    def take(self) -> float:
        """0 when a request may pass now, else the seconds until one may."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return 0.0
            return (1 - self.tokens) / self.rate


def parse_rate(text: str | None) -> float | None:
    """``N/s`` or ``N/min`` -> requests per second (None: no limit)."""
    if text is None:
        return None
    number, _, unit = text.strip().partition("/")
    per = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "minute": 60.0}.get(unit.strip())
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if per is None or not value > 0:
        raise ServeError(f"--rate-limit must look like 20/s or 600/min, got {text!r}.")
    return value / per


@dataclass
class ServerStats:
    """What the server answered, counted under one lock (requests run on a thread pool)."""

    requests: int = 0
    inferences: int = 0  # answered inference requests
    images: int = 0  # images in answered inference requests
    refused: int = 0  # 4xx/5xx answers, rate-limited ones included
    rate_limited: int = 0
    started: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def summary(self) -> str:
        return (f"{self.requests} requests ({self.inferences} inference requests, {self.images} images; "
                f"{self.refused} refused, {self.rate_limited} of them rate-limited) in "
                f"{time.monotonic() - self.started:.1f} s")


def _test_faults() -> dict[str, float]:
    """The test-only fault switches in $MODELPROVE_SERVE_TEST_FAULTS (see tests/test_serve.py)."""
    faults: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in os.environ.get(TEST_FAULTS, "").split(","))):
        key, _, value = item.partition("=")
        if key not in ("die_after", "delay"):
            raise ServeError(f"${TEST_FAULTS}: unknown fault {key!r} (known: die_after, delay).")
        faults[key] = float(value)
    return faults


def create_app(model: ServedModel, *, output: OutputMode | str = "probabilities", max_batch: int = 256,
               rate_limit: float | None = None, log: Callable[[str], None] | None = None):
    """The FastAPI app serving ``model`` over the OIP REST endpoints; ``app.state.stats`` counts."""
    mode = OutputMode.parse(output) if isinstance(output, str) else output
    if max_batch < 1:
        raise ServeError(f"--max-batch must be at least 1, got {max_batch}.")
    log = log or (lambda line: None)
    limiter = RateLimiter(rate_limit) if rate_limit else None
    faults = _test_faults()
    stats = ServerStats()
    predict_lock = threading.Lock()  # one forward pass at a time: CPU-bound, and deterministic
    app = FastAPI(title=f"modelprove serve: {model.name}", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.stats = stats
    output_meta = mode.output_metadata(model.num_classes)
    metadata = {
        "name": model.name, "versions": ["1"], "platform": model.platform,
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *model.input_shape],
                    "parameters": {"pixel_range": "0..1", "layout": "NCHW"}}],
        "outputs": [output_meta],
        "parameters": {"max_batch_size": max_batch, "output_mode": str(mode), "num_classes": model.num_classes},
    }

    class Refused(Exception):
        def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
            self.status, self.message, self.headers = status, message, headers

    @app.exception_handler(Refused)
    async def refused(request: Request, error: Refused):
        request.state.note = error.message[:120]
        return JSONResponse({"error": error.message}, status_code=error.status, headers=error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException):  # e.g. an unknown path, in the OIP's form
        return JSONResponse({"error": str(error.detail)}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError):
        return JSONResponse({"error": f"invalid request: {error.errors()}"}, status_code=400)

    @app.middleware("http")
    async def one_line_per_request(request: Request, call_next):
        start = time.perf_counter()
        request.state.note = ""
        response = await call_next(request)
        with stats.lock:
            stats.requests += 1
            stats.refused += response.status_code >= 400
            number = stats.requests
        log(f"#{number} {request.method} {request.url.path} -> {response.status_code} "
            f"{(time.perf_counter() - start) * 1000:.1f} ms {request.state.note}".rstrip())
        return response

    def check_model(name: str, version: str | None) -> None:
        if name != model.name:
            raise Refused(404, f"unknown model {name!r}: this server serves {model.name!r}.")
        if version not in (None, "1"):
            raise Refused(404, f"model {name!r} has version 1 only, not {version!r}.")

    @app.get("/v2/health/live")
    def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    def ready():
        return {"ready": True}

    @app.get("/v2")
    def server_metadata():
        from modelprove import __version__

        return {"name": "modelprove", "version": __version__, "extensions": ["statistics"]}

    @app.get("/v2/models/{name}/ready")
    @app.get("/v2/models/{name}/versions/{version}/ready")
    def model_ready(name: str, version: str | None = None):
        check_model(name, version)
        return {"name": name, "ready": True}

    @app.get("/v2/models/{name}")
    @app.get("/v2/models/{name}/versions/{version}")
    def model_metadata(name: str, version: str | None = None):
        check_model(name, version)
        return metadata

    @app.get("/v2/models/{name}/stats")
    def model_stats(name: str):
        check_model(name, None)
        with stats.lock:
            return {"model_stats": [{"name": model.name, "version": "1", "inference_count": stats.images,
                                     "execution_count": stats.inferences}]}

    @app.post("/v2/models/{name}/infer")
    @app.post("/v2/models/{name}/versions/{version}/infer")
    async def infer(name: str, request: Request, version: str | None = None):
        check_model(name, version)
        if limiter is not None:
            wait = limiter.take()
            if wait > 0:
                with stats.lock:
                    stats.rate_limited += 1
                raise Refused(429, f"rate limit of {limiter.rate:g} requests/s exceeded; retry in {wait:.2f} s.",
                              headers={"Retry-After": str(max(1, math.ceil(wait)))})
        try:
            body = json.loads(await request.body())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise Refused(400, f"the request body is not JSON: {exc}.") from None
        images = _read_images(body, model, max_batch, Refused)
        request.state.note = f"{len(images)} images {list(images.shape)}"
        return await _answer(images, body, model, mode, output_meta, stats, faults, predict_lock, Refused)

    return app


def _read_images(body: Any, model: ServedModel, max_batch: int, refused) -> np.ndarray:
    """The request's one input tensor as float32 (N, C, H, W), checked against the model."""
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise refused(400, f"an inference request needs 'inputs' with exactly one tensor ({INPUT_NAME!r}).")
    tensor = inputs[0]
    if tensor.get("name") != INPUT_NAME:
        raise refused(400, f"unknown input {tensor.get('name')!r}; the model's input is {INPUT_NAME!r}.")
    if tensor.get("datatype") not in DATATYPES:
        raise refused(400, f"input datatype {tensor.get('datatype')!r} is not accepted; send FP32 (or FP64).")
    shape = tensor.get("shape")
    expected = list(model.input_shape)
    if not (isinstance(shape, list) and len(shape) == 1 + len(expected) and shape[1:] == expected
            and isinstance(shape[0], int) and shape[0] >= 1):
        raise refused(400, f"input shape {shape!r} does not match the model's [N, {', '.join(map(str, expected))}].")
    if shape[0] > max_batch:
        raise refused(400, f"a batch of {shape[0]} images exceeds this server's max_batch_size of {max_batch}.")
    try:
        data = np.asarray(tensor.get("data"), dtype=DATATYPES[tensor["datatype"]]).ravel()
    except (TypeError, ValueError):
        raise refused(400, "the input data is not a list of numbers.") from None
    if data.size != math.prod(shape):
        raise refused(400, f"the input holds {data.size} values; shape {shape} needs {math.prod(shape)}.")
    if not np.isfinite(data).all():
        raise refused(400, "the input holds NaN or infinite values.")
    return data.astype(np.float32, copy=False).reshape(shape)


async def _answer(images, body, model, mode, output_meta, stats, faults, predict_lock, refused):
    import asyncio

    from starlette.concurrency import run_in_threadpool

    wanted = [o.get("name") for o in body.get("outputs") or [] if isinstance(o, dict)]
    unknown = [name for name in wanted if name != output_meta["name"]]
    if unknown:
        raise refused(400, f"unknown output {unknown[0]!r}; this model returns {output_meta['name']!r}.")
    if "die_after" in faults:
        with stats.lock:
            dying = stats.inferences >= faults["die_after"]
        if dying:  # test-only: a server killed mid-verification (no answer, no shutdown)
            os._exit(3)
    if faults.get("delay"):
        await asyncio.sleep(faults["delay"])

    def run() -> np.ndarray:
        with predict_lock:
            return np.asarray(model.predict(images), dtype=np.float32)

    try:
        probabilities = await run_in_threadpool(run)
    except ModelproveError as exc:
        raise refused(500, f"the model failed: {exc}") from None
    shape, datatype, data = mode.apply(probabilities)
    with stats.lock:
        stats.inferences += 1
        stats.images += len(images)
    response = {"model_name": model.name, "model_version": "1",
                "outputs": [{"name": output_meta["name"], "datatype": datatype, "shape": shape, "data": data}]}
    if "id" in body:
        response["id"] = body["id"]
    return response


__all__ = ["OutputMode", "RateLimiter", "ServeError", "ServedModel", "ServerStats", "create_app", "parse_rate"]
