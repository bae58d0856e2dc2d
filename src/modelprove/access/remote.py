"""Suspects behind a prediction API that speaks the Open Inference Protocol (KServe v2 REST), as spoken
by NVIDIA Triton, KServe, Seldon MLServer and ``modelprove serve``.

``remote_access("http://HOST:PORT/v2/models/NAME")`` reads the model's metadata (never a query) and
returns the access level it allows, built on :mod:`modelprove.access.levels` (the same query count,
budget and output checks as a local suspect):

- an FP16/FP32/FP64 output of shape (N, K) is black-box. What it holds is read from the output's
  ``parameters.content`` ("probabilities" or "logits", which modelprove serve and MLServer's metadata
  can declare); when undeclared, the first answer decides it: rows that are distributions (within
  rounding) are probabilities, non-negative rows that are not are scores renormalised to 1, anything
  else is logits (softmaxed). Rounded probabilities are accepted, the number of decimals detected
  (or declared in ``parameters.decimals``) and the row-sum tolerance widened to match;
- an INT output (N,) is label-only: top-1 labels;
- a BYTES output (N, k) in the "value:index[:label]" format of Triton's classification extension
  (top-k) is label-only too: k < K probabilities are not a probability vector.

The input must be declared: FP16/FP32/FP64, shape (N, C, H, W) or (N, C*H*W) (a flattened vector, as
scikit-learn models take). Input shape and class count are checked against the protection (by
``check_input``, which every method calls) before the first query; images are sent in batches within
the server's ``max_batch_size`` (model ``parameters``) or fixed batch dimension.

Each inference request is retried on 429 (honouring Retry-After), 5xx, timeouts and connection
errors, with exponential backoff; the budget is enforced before anything is sent. The access keeps a
**transcript**: for every answered request, in order, the sha256 of the exact request body sent, the
sha256 of the exact response body received, and the number of images. Its digest is the sha256 of
the lines ``"<request sha256> <response sha256> <images>\\n"`` concatenated in order; with a path the
transcript is also written as JSON lines as it grows (a header, then one line per request, a failed
one included), so an arbiter can audit the evidence or replay the requests, and a run that died
says what it had sent. Verification is seeded, so rerunning a command re-sends the same bodies in
the same order.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch
from torch import Tensor

from modelprove.access.levels import (
    BLACK_BOX,
    LABEL_ONLY,
    PROBABILITY_TOLERANCE,
    BlackBoxAccess,
    LabelOnlyAccess,
    _shape,
)
from modelprove.core.errors import SuspectError

REMOTE_PREFIXES = ("http://", "https://")
FLOAT_TYPES = {"FP16": np.float16, "FP32": np.float32, "FP64": np.float64}
INT_TYPES = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
RETRY_STATUS = (429, 500, 502, 503, 504)
DEFAULT_TIMEOUT = 30.0  # seconds per request
DEFAULT_BATCH = 256  # images per request unless the server allows fewer
_MAX_DECIMALS = 4  # rounding detected up to this many decimals (finer is indistinguishable from float32)


class RemoteError(SuspectError):
    """A remote suspect that cannot be reached, refuses, or answers outside the protocol."""


class _Unanswered(Exception):
    """A request that got no usable answer (the caller adds the URL and what had been sent)."""

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message, self.fix = message, fix


def is_remote(suspect: Any) -> bool:
    return isinstance(suspect, str) and suspect.lower().startswith(REMOTE_PREFIXES)


def transcript_digest(entries: list[dict]) -> str:
    """The digest of a transcript's answered requests (module docstring), recomputable from its file."""
    digest = hashlib.sha256()
    for entry in entries:
        digest.update(f"{entry['request_sha256']} {entry['response_sha256']} {entry['images']}\n".encode())
    return digest.hexdigest()


class Transcript:
    """The ordered (request sha256, response sha256, images) of every answered request; optionally a file."""

    def __init__(self, path: str | Path | None, header: dict[str, Any]):
        self.path = Path(path) if path is not None else None
        self.header = header
        self.entries: list[dict] = []
        self._file_started = False

    @property
    def images(self) -> int:
        return sum(entry["images"] for entry in self.entries)

    def add(self, request: bytes, response: bytes | None, images: int, attempts: int, error: str | None = None) -> None:
        entry = {"batch": len(self.entries) + 1, "images": images,
                 "request_sha256": hashlib.sha256(request).hexdigest(),
                 "response_sha256": hashlib.sha256(response).hexdigest() if response is not None else None,
                 "attempts": attempts}
        if error is None:
            self.entries.append(entry)
        else:
            entry["error"] = error
        self._write(entry)

    def _write(self, entry: dict) -> None:
        if self.path is None:
            return
        # A stale transcript of an earlier run of the same command is replaced: it belongs to a
        # verdict that was never written (or is being replaced with it).
        mode = "a" if self._file_started else "w"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, mode) as handle:
            if not self._file_started:
                handle.write(json.dumps({"transcript": "modelprove OIP queries", **self.header}, sort_keys=True) + "\n")
            handle.write(json.dumps(entry, sort_keys=True) + "\n")
            handle.flush()
        self._file_started = True

    def summary(self) -> dict[str, Any]:
        return {"digest": transcript_digest(self.entries), "batches": len(self.entries), "images": self.images,
                **({"path": str(self.path)} if self.path is not None else {})}


@dataclass
class OutputSpec:
    """The output tensor modelprove reads, and what it holds."""

    name: str
    datatype: str
    shape: list
    content: str | None  # probabilities, logits, labels, classification; None: detect on first answer
    num_classes: int | None
    decimals: int | None = None  # declared rounding
    k: int | None = None  # classification: classes per row

    @property
    def level(self) -> str:
        return BLACK_BOX if self.content in (None, "probabilities", "logits", "scores") else LABEL_ONLY


class OipClient:
    """One model on an OIP server: metadata, inference with retries, and the transcript."""

    def __init__(self, url: str, *, timeout: float | None = None, retries: int = 3, backoff: float = 0.25,
                 transcript: str | Path | None = None):
        import httpx

        parts = urlsplit(url)
        segments = [s for s in parts.path.split("/") if s]
        if parts.scheme not in ("http", "https") or not parts.netloc or len(segments) not in (3, 5) \
                or segments[:2] != ["v2", "models"] or (len(segments) == 5 and segments[3] != "versions"):
            raise RemoteError(f"{url!r} is not an Open Inference Protocol model URL.",
                              fix="write it as http://HOST:PORT/v2/models/NAME[/versions/VERSION].")
        if retries < 0 or backoff < 0 or (timeout is not None and timeout <= 0):
            raise RemoteError(f"timeout must be > 0 and retries, backoff >= 0; got {timeout}, {retries}, {backoff}.")
        self.url = url.rstrip("/")
        self.model = segments[2]
        self.base = f"{parts.scheme}://{parts.netloc}"
        self.path = "/" + "/".join(segments)
        self.timeout = timeout or DEFAULT_TIMEOUT
        self.retries, self.backoff = retries, backoff
        self.http = httpx.Client(base_url=self.base, timeout=self.timeout)
        self.attempts = 0  # HTTP requests made, retries included
        self.retried = 0
        self.output_record: dict[str, Any] = {}
        try:
            response = self._send("GET", self.path, what="the model metadata")
        except _Unanswered as failed:
            raise RemoteError(failed.message, path=self.url,
                              fix=failed.fix or "check that the server is running and the URL is right.") from None
        if response.status_code != 200:
            raise RemoteError(f"the server refused the model metadata: {_error_text(response)}", path=self.url,
                              fix="check the model name in the URL (GET /v2/models on Triton lists them).")
        self.metadata_bytes = response.content
        self.metadata = _json(response, self.url, "model metadata")
        self.input_name, self.input_dtype, self.input_shape, self.flat, self.fixed_batch = self._input()
        self.output = self._output()
        parameters = self.metadata.get("parameters") or {}
        limit = parameters.get("max_batch_size") if isinstance(parameters, dict) else None
        self.batch_limit = min(DEFAULT_BATCH, int(limit)) if isinstance(limit, int) and limit > 0 else DEFAULT_BATCH
        if self.fixed_batch:
            self.batch_limit = self.fixed_batch
        self.transcript = Transcript(transcript, {
            "url": self.url, "metadata_sha256": self.metadata_sha256,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self._tolerance = PROBABILITY_TOLERANCE

    @property
    def metadata_sha256(self) -> str:
        return hashlib.sha256(self.metadata_bytes).hexdigest()

    # -- metadata --------------------------------------------------------------------------------

    def _input(self) -> tuple[str, str, tuple[int, ...] | None, int | None, int | None]:
        inputs = self.metadata.get("inputs")
        if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
            count = len(inputs) if isinstance(inputs, list) else 0
            raise RemoteError(
                f"the model metadata declares {count} inputs; an image classifier has exactly one, and modelprove "
                "checks its shape and datatype before the first query.", path=self.url,
                fix="declare the input tensor in the server's model configuration (MLServer: model-settings.json "
                    "'inputs'; Triton: config.pbtxt).")
        tensor = inputs[0]
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if datatype not in FLOAT_TYPES:
            raise RemoteError(
                f"the model's input {name!r} takes {datatype} tensors; modelprove sends images as floats in [0, 1] "
                "(FP32, FP16 or FP64).", path=self.url,
                fix="serve a model that takes float images in [0, 1] (e.g. `modelprove serve`).")
        if not (isinstance(shape, list) and len(shape) in (2, 4) and all(isinstance(v, int) for v in shape)
                and all(v > 0 for v in shape[1:])):
            raise RemoteError(f"the model's input {name!r} has shape {shape}; expected [N, C, H, W] or [N, C*H*W] "
                              "with fixed image dimensions.", path=self.url)
        fixed = shape[0] if shape[0] > 0 else None
        if len(shape) == 4:
            return name, datatype, tuple(shape[1:]), None, fixed
        return name, datatype, None, shape[1], fixed

    def _output(self) -> OutputSpec:
        outputs = [o for o in self.metadata.get("outputs") or [] if isinstance(o, dict)]
        if not outputs:
            raise RemoteError("the model metadata declares no outputs, so modelprove cannot tell labels from "
                              "probabilities before querying.", path=self.url,
                              fix="declare the output tensor in the server's model configuration.")

        def rank(o: dict) -> int:
            content = (o.get("parameters") or {}).get("content") if isinstance(o.get("parameters"), dict) else None
            name = str(o.get("name", "")).lower()
            if content in ("probabilities", "logits"):
                return 0
            if o.get("datatype") in FLOAT_TYPES:
                return 1 if any(word in name for word in ("prob", "logit", "score", "softmax")) else 2
            return 3 if o.get("datatype") in INT_TYPES else 4

        chosen = min(outputs, key=rank)
        name, datatype, shape = chosen.get("name"), chosen.get("datatype"), chosen.get("shape") or []
        parameters = chosen.get("parameters") if isinstance(chosen.get("parameters"), dict) else {}
        declared_classes = parameters.get("num_classes")
        declared_classes = declared_classes if isinstance(declared_classes, int) and declared_classes >= 2 else None
        if datatype in FLOAT_TYPES:
            classes = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) and shape[-1] >= 2 else declared_classes
            if classes is None:
                raise RemoteError(f"the output {name!r} has shape {shape}; cannot tell the number of classes.",
                                  path=self.url, fix="declare the output's shape as [-1, K].")
            content = parameters.get("content") if parameters.get("content") in ("probabilities", "logits") else None
            decimals = parameters.get("decimals") if isinstance(parameters.get("decimals"), int) else None
            return OutputSpec(name, datatype, shape, content, classes, decimals)
        if datatype in INT_TYPES:
            return OutputSpec(name, datatype, shape, "labels", declared_classes)
        if datatype == "BYTES":
            k = shape[-1] if len(shape) == 2 and isinstance(shape[-1], int) and shape[-1] > 0 else parameters.get("k")
            return OutputSpec(name, datatype, shape, "classification", declared_classes, k=k)
        raise RemoteError(f"the output {name!r} has datatype {datatype}; expected FP32/FP64 scores, INT labels or "
                          "BYTES classifications.", path=self.url)

    def describe(self) -> dict[str, Any]:
        return {"url": self.url, "model": self.model, "metadata_sha256": self.metadata_sha256,
                "platform": self.metadata.get("platform"),
                "input": {"name": self.input_name, "datatype": self.input_dtype,
                          "layout": "flat" if self.flat else "NCHW"},
                "output": {"name": self.output.name, "datatype": self.output.datatype,
                           "content": self.output.content, "declared": self.output.content is not None,
                           **({"k": self.output.k} if self.output.k else {}), **self.output_record},
                "batch_limit": self.batch_limit, "http_requests": self.attempts, "retried": self.retried,
                "transcript": self.transcript.summary()}

    # -- inference -------------------------------------------------------------------------------

    def predict(self, batch: Tensor) -> np.ndarray:
        """One batch of images (already counted and budget-checked by the access) -> probabilities
        (N, K) float32, or labels (N,) int64 for label outputs."""
        array = batch.detach().cpu().numpy()
        parts = []
        step = self.batch_limit
        for start in range(0, len(array), step):
            chunk = array[start:start + step]
            parts.append(self._infer(chunk))
        return np.concatenate(parts) if len(parts) > 1 else parts[0]

    def _infer(self, chunk: np.ndarray) -> np.ndarray:
        count = len(chunk)
        if self.fixed_batch and count < self.fixed_batch:  # a fixed batch dimension: pad with blank images
            chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - count, *chunk.shape[1:]), chunk.dtype)])
        values = chunk.reshape(len(chunk), -1) if self.flat else chunk
        body = {"id": f"modelprove-{len(self.transcript.entries) + 1}",
                "inputs": [{"name": self.input_name, "shape": list(values.shape), "datatype": self.input_dtype,
                            "data": values.astype(FLOAT_TYPES[self.input_dtype]).ravel().tolist()}],
                "outputs": [{"name": self.output.name}]}
        request = json.dumps(body, separators=(",", ":")).encode()
        attempts_before, answer = self.attempts, None
        try:
            response = self._send("POST", f"{self.path}/infer", request, what=f"a batch of {count} images",
                                  headers={"Content-Type": "application/json"})
            answer = response.content
            if response.status_code != 200:
                raise _Unanswered(f"the server refused a batch of {count} images: {_error_text(response)}.")
            result = self._read(response, len(chunk))[:count]
        except _Unanswered as failed:
            self.transcript.add(request, answer, count, self.attempts - attempts_before, error=failed.message)
            raise self._stopped(failed, count) from None
        self.transcript.add(request, response.content, count, self.attempts - attempts_before)
        return result

    def _stopped(self, failed: "_Unanswered", count: int) -> RemoteError:
        """The error of a failed batch, with what had been sent before it and where the transcript is."""
        summary = self.transcript.summary()
        where = (f"the transcript of what was sent is in {self.transcript.path}" if self.transcript.path
                 else "no transcript file was asked for (the CLI writes one beside --json)")
        return RemoteError(
            f"{failed.message} {summary['batches']} batches ({summary['images']} images) had been answered before "
            f"this batch of {count}; {where}.", path=self.url,
            fix=failed.fix or "rerun the same command once the server answers: verification is seeded, so it sends "
                              "the same batches in the same order.")

    def _send(self, method: str, path: str, content: bytes | None = None, *, what: str,
              headers: dict[str, str] | None = None):
        """The response to one request, retried on 429, 5xx, timeouts and lost connections; raises
        :class:`_Unanswered` when every attempt failed."""
        import httpx

        problem, timed_out = "", False
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
            self.attempts += 1
            try:
                response = self.http.request(method, path, content=content, headers=headers)
            except httpx.TimeoutException:
                problem, timed_out = f"no answer within the timeout of {self.timeout:g} s", True
                wait = self._backoff(attempt)
            except httpx.TransportError as exc:
                problem, timed_out = f"cannot reach the server ({type(exc).__name__}: {exc or 'connection lost'})", False
                wait = self._backoff(attempt)
            else:
                if response.status_code not in RETRY_STATUS:
                    return response
                problem, timed_out = _error_text(response), False
                wait = self._backoff(attempt, response.headers.get("Retry-After"))
            if attempt < self.retries:
                time.sleep(wait)
        raise _Unanswered(f"{what}: {problem} ({self.retries + 1} attempts).",
                          "raise the timeout (--timeout) or lighten the server's load." if timed_out else None)

    def _backoff(self, attempt: int, retry_after: str | None = None) -> float:
        wait = self.backoff * 2**attempt
        if retry_after is not None:
            try:
                wait = max(wait, min(float(retry_after), 60.0))
            except ValueError:
                pass
        return wait

    def _read(self, response, count: int) -> np.ndarray:
        try:
            body = response.json()
        except ValueError:
            raise _Unanswered(f"the inference response is not JSON (HTTP {response.status_code}).") from None
        outputs = body.get("outputs") if isinstance(body, dict) else None
        found = [o for o in outputs or [] if isinstance(o, dict) and o.get("name") == self.output.name]
        if not found and isinstance(outputs, list) and len(outputs) == 1 and isinstance(outputs[0], dict):
            found = outputs  # one output under another name: the one asked for
        if not found:
            raise _Unanswered(f"the response has no output {self.output.name!r}.")
        tensor = found[0]
        shape, data = tensor.get("shape"), tensor.get("data")
        if not isinstance(shape, list) or not shape or shape[0] != count or not isinstance(data, list) \
                or len(data) != math.prod(shape):
            raise _Unanswered(f"the output {self.output.name!r} has shape {shape} with "
                              f"{len(data) if isinstance(data, list) else 'no'} values for {count} images.")
        if self.output.content == "labels":
            return np.asarray(data).reshape(count, -1)[:, 0]
        if self.output.content == "classification":
            return self._top1(data, count)
        try:
            scores = np.asarray(data, dtype=np.float64).reshape(count, -1)
        except (TypeError, ValueError):
            raise _Unanswered(f"the output {self.output.name!r} holds non-numbers.") from None
        return self._as_probabilities(scores).astype(np.float32)

    def _top1(self, data: list, count: int) -> np.ndarray:
        """Labels from "value:index[:label]" strings (Triton's classification extension), k per row."""
        try:
            pairs = [(float(item.split(":")[0]), int(item.split(":")[1])) for item in data]
        except (AttributeError, IndexError, ValueError):
            raise _Unanswered("the classification output is not 'value:index[:label]' strings.") from None
        k = len(pairs) // count
        rows = [pairs[i * k:(i + 1) * k] for i in range(count)]
        return np.asarray([max(row)[1] for row in rows], dtype=np.int64)

    def _as_probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Rows as probability vectors, deciding (once) what an undeclared output holds; records rounding."""
        record = self.output_record
        if self.output.content == "logits" or (self.output.content is None and record.get("detected") == "logits"):
            shifted = scores - scores.max(axis=1, keepdims=True)
            exp = np.exp(shifted)
            return exp / exp.sum(axis=1, keepdims=True)
        decimals = self.output.decimals if self.output.decimals is not None else detect_decimals(scores)
        classes = scores.shape[1]
        tolerance = PROBABILITY_TOLERANCE if decimals is None else max(PROBABILITY_TOLERANCE,
                                                                       0.5 * classes * 10.0**-decimals + 1e-6)
        sums = scores.sum(axis=1)
        deviation = float(np.abs(sums - 1).max()) if len(sums) else 0.0
        if self.output.content is None and "detected" not in record:
            if (scores >= -tolerance).all() and deviation <= tolerance:
                record["detected"] = "probabilities"
            elif (scores >= 0).all() and (sums > 0).all():
                record["detected"] = "scores"  # e.g. per-class sigmoids: renormalised, and recorded
            else:
                record["detected"] = "logits"
                return self._as_probabilities(scores)
        if record.get("detected") == "scores":
            record["renormalised_rows"] = record.get("renormalised_rows", 0) + len(scores)
            record["max_row_sum_deviation"] = max(record.get("max_row_sum_deviation", 0.0), deviation)
            return scores / np.where(sums > 0, sums, 1.0)[:, None]
        if decimals is not None:  # the finest grid seen over the batches
            record["decimals"] = max(record.get("decimals", decimals), decimals)
            record["rounded_batches"] = record.get("rounded_batches", 0) + 1
        else:
            record["unrounded_batches"] = record.get("unrounded_batches", 0) + 1
        record["max_row_sum_deviation"] = max(record.get("max_row_sum_deviation", 0.0), deviation)
        self._tolerance = max(self._tolerance, tolerance)
        return scores

    @property
    def tolerance(self) -> float:
        return self._tolerance

    def close(self) -> None:
        self.http.close()


def detect_decimals(scores: np.ndarray) -> int | None:
    """The fewest decimals (0..4) every value of ``scores`` strictly between 0 and 1 is rounded to, or None.

    A value within 10^-6 of the 10^-D grid counts (float32 storage moves a rounded value by < 10^-7);
    an unrounded value lands that close by chance with probability 2·10^-6·10^D <= 0.02, so a batch
    of tens of values is not mistaken for rounded. Values at 0 or 1 say nothing and are skipped.
    """
    values = scores[(scores > 1e-7) & (scores < 1 - 1e-7)]
    if values.size == 0:
        return None
    for decimals in range(_MAX_DECIMALS + 1):
        scaled = values * 10.0**decimals
        if (np.abs(scaled - np.round(scaled)) <= 1e-6 * 10.0**decimals + 1e-9).all():
            return decimals
    return None


class RemoteAccess:
    """What remote accesses add to their level: the client, its transcript, and a fuller describe()."""

    client: OipClient
    _classes_known: bool = True

    @property
    def transcript(self) -> Transcript:
        return self.client.transcript

    @property
    def probability_tolerance(self) -> float:  # type: ignore[override]
        return self.client.tolerance

    def check_input(self, input_shape, num_classes=None, *, what: str = "the protection") -> None:
        expected = tuple(int(v) for v in input_shape)
        if self.client.flat is not None and self.client.flat != math.prod(expected):
            raise SuspectError(
                f"{self.name} takes flat vectors of {self.client.flat} values, but {what} uses images of "  # type: ignore[attr-defined]
                f"{_shape(expected)} ({math.prod(expected)} values).", path=self.source,  # type: ignore[attr-defined]
                fix="verify against a protection of the same task.")
        if not self._classes_known and num_classes is not None:
            self.num_classes, self._classes_known = int(num_classes), True  # labels only: the protection's
        super().check_input(input_shape, num_classes, what=what)  # type: ignore[misc]

    def _query(self, images: Tensor):
        if not self._classes_known:
            raise SuspectError(f"{self.name} does not declare its number of classes, so its labels cannot be "  # type: ignore[attr-defined]
                               "checked.", path=self.source,  # type: ignore[attr-defined]
                               fix="verify it against a protection (which gives the classes), or declare "
                                   "parameters.num_classes on the server's output.")
        return super()._query(images)  # type: ignore[misc]

    def describe(self) -> dict:
        return {**super().describe(), **self.client.describe()}  # type: ignore[misc]


class RemoteBlackBoxAccess(RemoteAccess, BlackBoxAccess):
    """A black-box suspect behind an OIP server (probabilities, logits or rounded probabilities)."""

    def __init__(self, client: OipClient, *, name: str, budget: int | None = None):
        self.client = client
        super().__init__(client.predict, outputs="probabilities", num_classes=client.output.num_classes,
                         input_shape=client.input_shape, name=name, source=client.url, budget=budget,
                         batch_size=client.batch_limit)

    def as_label_only(self) -> LabelOnlyAccess:
        return RemoteLabelOnlyAccess(self.client, name=self.name, budget=self.budget)


class RemoteLabelOnlyAccess(RemoteAccess, LabelOnlyAccess):
    """A label-only suspect behind an OIP server (labels, top-k, or a black-box server seen as labels)."""

    def __init__(self, client: OipClient, *, name: str, budget: int | None = None):
        self.client = client
        classes = client.output.num_classes
        self._classes_known = classes is not None
        outputs = "probabilities" if client.output.level == BLACK_BOX else "labels"
        super().__init__(client.predict, outputs=outputs, num_classes=classes or 2, input_shape=client.input_shape,
                         name=name, source=client.url, budget=budget, batch_size=client.batch_limit)


def remote_access(url: str, *, budget: int | None = None, name: str | None = None, timeout: float | None = None,
                  retries: int = 3, backoff: float = 0.25, transcript: str | Path | None = None) -> LabelOnlyAccess:
    """The suspect at an OIP model URL, at the level its metadata allows (module docstring); no query is
    sent. ``timeout`` per request (seconds), ``retries`` after the first attempt, ``backoff`` the first
    wait (doubling), ``transcript`` a JSON-lines file for the queries."""
    client = OipClient(url, timeout=timeout, retries=retries, backoff=backoff, transcript=transcript)
    cls = RemoteBlackBoxAccess if client.output.level == BLACK_BOX else RemoteLabelOnlyAccess
    return cls(client, name=name or client.model, budget=budget)


def _json(response, url: str, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise RemoteError(f"the {what} is not JSON (HTTP {response.status_code}).", path=url) from None


def _error_text(response) -> str:
    try:
        body = response.json()
        if isinstance(body, dict) and "error" in body:
            return f"HTTP {response.status_code}: {body['error']}"
    except ValueError:
        pass
    return f"HTTP {response.status_code}: {response.text[:200]}"


__all__ = ["OipClient", "RemoteAccess", "RemoteBlackBoxAccess", "RemoteError", "RemoteLabelOnlyAccess",
           "Transcript", "detect_decimals", "is_remote", "remote_access", "transcript_digest"]
