"""``modelprove serve``: a model file or ONNX file behind the OIP app, run by uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import signal
import socket
import sys
from pathlib import Path

import numpy as np
import torch

from modelprove.access import BLACK_BOX, open_suspect
from modelprove.serve.app import OutputMode, ServedModel, ServeError, create_app, parse_rate


def served_model(path: str | Path, *, name: str | None = None, outputs: str = "logits") -> ServedModel:
    """The model at ``path`` (NAME.safetensors + NAME.json, or NAME.onnx) as probability vectors.

    It is opened like a suspect (never unpickled; ONNX outputs taken as ``outputs``) and queried
    through its black-box access, so the server returns exactly what ``verify`` would read locally.
    """
    path = Path(path)
    access = open_suspect(path, level=BLACK_BOX, outputs=outputs, name=name or path.stem)  # type: ignore[arg-type]
    if access.input_shape is None:
        raise ServeError("the model does not declare a fixed input shape (C, H, W); it cannot be served.", path=path)

    def predict(images: np.ndarray) -> np.ndarray:
        return access.probabilities(torch.from_numpy(images)).numpy()  # type: ignore[attr-defined]

    platform = "onnxruntime_onnx" if path.suffix.lower() == ".onnx" else "modelprove_pytorch"
    return ServedModel(access.name, predict, tuple(access.input_shape), access.num_classes, platform, str(path))


def run_server(path: str | Path, *, host: str = "127.0.0.1", port: int = 8000, output: str = "probabilities",
               rate_limit: str | None = None, max_batch: int = 256, name: str | None = None,
               outputs: str = "logits", threads: int = 1, say=print) -> str:
    """Serve until SIGINT or SIGTERM, logging one line per request; -> the summary printed at exit.

    ``port`` 0 picks a free port; the first line printed gives the URL either way.
    """
    import uvicorn

    torch.set_num_threads(threads)
    mode = OutputMode.parse(output)
    rate = parse_rate(rate_limit)
    model = served_model(path, name=name, outputs=outputs)

    def log(line: str) -> None:
        say(f"modelprove serve: {line}")

    app = create_app(model, output=mode, max_batch=max_batch, rate_limit=rate, log=log)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror}.",
                         fix="choose another --port (0 picks a free one), or stop what uses it.") from None
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    log(f"serving {model.source} as {model.name!r} ({mode}, {model.num_classes} classes, input "
        f"{'x'.join(map(str, model.input_shape))}, max batch {max_batch}"
        f"{f', at most {rate:g} requests/s' if rate else ''}) at http://{shown}:{bound}/v2/models/{model.name}")
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal with the handlers it
    # found installed: with these, that re-raise is a no-op, so the summary prints and the exit code is 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
    summary = f"stopped after {app.state.stats.summary()}"
    log(summary)
    sys.stdout.flush()
    return summary


__all__ = ["run_server", "served_model"]
