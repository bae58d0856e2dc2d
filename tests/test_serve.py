"""Suspects behind an API: `modelprove serve` as a real process on a loopback port, the OIP client as an
access level, output defences, a bounded load test and faults (a killed server, a slow one).

Every server listens on 127.0.0.1 with a port the OS picks (--port 0), is waited for with a bounded
loop, and is stopped in a finally. In-process tests run the same app under uvicorn in a thread.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer
from fastapi import FastAPI, Request

from modelprove.access import BLACK_BOX, LABEL_ONLY, QueryBudgetError, RemoteError, open_suspect, remote_access
from modelprove.access.remote import transcript_digest
from modelprove.cli.main import run_verify
from modelprove.core.errors import SuspectError
from modelprove.methods import METHODS, key_watermarks as kw, move
from modelprove.models import build_model, card_for, save_model
from modelprove.report import load_verdict
from modelprove.serve import OutputMode, ServedModel, create_app, served_model
from modelprove.training import TrainConfig, train

SRC = str(Path(__file__).parents[1] / "src")
COMPETENCE = 200  # clean images every verification first sends (base.COMPETENCE_IMAGES: is it a real model?)
EVIDENCE = 20 * 6  # black-box MOVE's m_black_box = 20 images, each with its five augmentations


def evidence_queries(verdict) -> int:
    """Queries the method's evidence took (the verdict counts the competence check's too)."""
    return verdict.queries - ((verdict.competence or {}).get("queries") or 0)
START_SECONDS = 120  # bounded wait for a server process to print its URL (torch import under load)


# -- fixtures: two tiny protections and their models ----------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory, bars_task, tiny_panel, single_thread):
    """A MOVE protection (black-box), an independent model, and an Adi watermark host (label-only), each
    protection calibrated on the session's tiny null panel."""
    defender, attacker, test = bars_task
    root = tmp_path_factory.mktemp("serve")
    config = move.MoveConfig(arch="lenet5", epochs=6, benign_models=1, meta_samples=30, meta_epochs=10,
                             test_transformed=20, m=8, m_black_box=20)
    move.protect(defender, test, root / "move", config, panel=tiny_panel)
    torch.manual_seed(7)
    independent = build_model("cnn_small", 1, defender.num_classes, (28, 28))
    train(independent, attacker, TrainConfig(epochs=3, batch_size=50, seed=7), show_progress=False)
    save_model(independent, card_for(independent, defender.classes), root / "independent.safetensors")
    adi = kw.AdiConfig(arch="lenet5", epochs=6, key_fraction=0.03, key_repeats=10, batch_size=50)
    METHODS["adi"].protect(defender, test, root / "adi", adi, panel=tiny_panel)
    return root


class Server:
    """`python -m modelprove serve ...` on 127.0.0.1, its log in a file (a pipe could fill and block it)."""

    def __init__(self, model: Path, log: Path, *args: str, env: dict[str, str] | None = None):
        self.log = log
        self.handle = open(log, "w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "modelprove", "serve", str(model), "--port", "0", *args],
            stdout=self.handle, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})})
        self.url = ""

    def wait(self) -> "Server":
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and self.process.poll() is None:
            found = re.search(r"at (http://127\.0\.0\.1:\d+/v2/models/\S+)", self.log.read_text())
            if found:
                self.url = found.group(1)
                return self
            time.sleep(0.2)
        raise AssertionError(f"server did not start: {self.log.read_text()[-2000:]}")

    @property
    def base(self) -> str:
        return self.url.split("/v2/")[0]

    def stats(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/stats", timeout=10).json()["model_stats"][0]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.handle.close()
        return self.process.returncode

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.handle.close()


@pytest.fixture(scope="module")
def servers(models, tmp_path_factory):
    """Every server process of this module, started side by side (each takes seconds to import torch)."""
    logs = tmp_path_factory.mktemp("logs")
    victim, host = models / "move" / "victim", models / "adi" / "host"
    started = {
        "victim": Server(victim, logs / "victim.log", "--max-batch", "32"),  # MOVE's 120 images in 4 requests
        "independent": Server(models / "independent", logs / "independent.log"),
        "labels": Server(host, logs / "labels.log", "--output", "label"),
        # Test-only faults ($MODELPROVE_SERVE_TEST_FAULTS): dies without answering its 3rd inference request.
        "dying": Server(victim, logs / "dying.log", "--max-batch", "32",
                        env={"MODELPROVE_SERVE_TEST_FAULTS": "die_after=2"}),
        "slow": Server(victim, logs / "slow.log", env={"MODELPROVE_SERVE_TEST_FAULTS": "delay=5"}),
    }
    try:
        yield {name: server.wait() for name, server in started.items()}
    finally:
        for server in started.values():
            server.kill()


# -- the real server process ------------------------------------------------------------------------


def test_remote_verification_gives_the_files_verdict(models, servers, tmp_path):
    """The issue's acceptance test: serve the victim (and an independent model), verify each over HTTP and
    from its file; same outcome, same numbers (the server answers with the same model, float32 exact),
    by the paper's test and by the default null-panel rule (at this tiny scale often inconclusive)."""
    protection = models / "move"
    statistics = {}
    for name, model in (("victim", protection / "victim"), ("independent", models / "independent")):
        remote = run_verify(protection, servers[name].url, rule="paper", json_out=tmp_path / f"{name}.json")
        local = run_verify(protection, model, access="black-box", rule="paper")
        assert remote.setting == local.setting == "black-box"
        assert remote.outcome == local.outcome and remote.queries == local.queries == COMPETENCE + EVIDENCE
        assert remote.p_value == pytest.approx(local.p_value, rel=1e-4, abs=1e-12)
        assert remote.statistic == pytest.approx(local.statistic, abs=1e-5)
        assert remote.hashes["suspect_metadata"] and "suspect_weights" not in remote.hashes
        record = json.loads((tmp_path / f"{name}.json").read_text())
        transcript = record["details"]["transcript"]
        # max batch 32 on the victim's server: 7 requests for the competence check, 4 for the evidence
        assert transcript["images"] == COMPETENCE + EVIDENCE
        assert transcript["batches"] == {"victim": 11, "independent": 2}[name]
        lines = [json.loads(line) for line in (tmp_path / f"{name}.transcript.jsonl").read_text().splitlines()]
        assert lines[0]["metadata_sha256"] == record["hashes"]["suspect_metadata"]
        assert transcript_digest(lines[1:]) == transcript["digest"]
        provenance = dict(load_verdict(tmp_path / f"{name}.json").provenance())  # what a report prints
        assert provenance["query transcript digest"].startswith(transcript["digest"])
        panel_remote = run_verify(protection, servers[name].url)
        panel_local = run_verify(protection, model, access="black-box")
        # Same outcome; the reasons may differ: an API does not reveal its architecture (a claimed one is not
        # trusted), so the remote suspect is compared with every architecture's panel.
        assert panel_remote.outcome == panel_local.outcome
        statistics[name] = remote.statistic
        if name == "victim":
            assert remote.outcome == "stolen" and remote.p_value < 0.01
    assert statistics["independent"] != pytest.approx(statistics["victim"])  # the URL reached each model


def test_a_label_only_server_is_refused_by_move_before_any_query_and_verified_by_a_label_method(models, servers):
    labels = servers["labels"]
    access = open_suspect(labels.url)
    assert access.level == LABEL_ONLY and access.describe()["output"]["content"] == "labels"
    with pytest.raises(SuspectError, match="needs black-box access .*offers only label-only"):
        METHODS["move"].verify(move.open_protection(models / "move"), access)
    assert labels.stats()["inference_count"] == 0  # refused at the metadata step
    opened = METHODS["adi"].open(models / "adi")
    remote = METHODS["adi"].verify(opened, open_suspect(labels.url))
    local = METHODS["adi"].verify(opened, open_suspect(models / "adi" / "host", level=LABEL_ONLY))
    assert remote.outcome == local.outcome and remote.statistic == pytest.approx(local.statistic)
    assert remote.statistic > 0.8  # the host answers its own key samples
    assert labels.stats()["inference_count"] == remote.queries > 0


def test_sequential_verification_over_http_stops_early_with_the_files_verdict(models, servers):
    protection = models / "move"
    before = servers["victim"].stats()["inference_count"]
    # MOVE's no-meta-classifier ablation (Sec. 7.2.3): the victim's confidence on the transformed images
    # against B's, a large delta_mu even on this tiny task, so the sequential test can stop early.
    options = ["meta_classifier=false", "sequential=true", "sequential_batch=2", "m_black_box=40"]  # the whole pool
    remote = run_verify(protection, servers["victim"].url, rule="paper", options=options)
    local = run_verify(protection, protection / "victim", access="black-box", rule="paper", options=options)
    assert remote.outcome == local.outcome == "stolen" and remote.queries == local.queries
    assert remote.rule.startswith("sequential:") and remote.details["decided_by"] == "sequential"
    assert remote.samples < 40 and evidence_queries(remote) == remote.samples  # stopped early; 1 query per image
    # the null-panel rule asked sequentially (its critical value from the panel's scores on the whole pool)
    default = run_verify(protection, servers["victim"].url, options=options)
    assert default.rule.startswith("sequential null panel") and default.outcome in ("stolen", "inconclusive")
    assert default.outcome != "not stolen"  # the victim itself: never cleared
    assert servers["victim"].stats()["inference_count"] - before == remote.queries + default.queries


def test_eight_concurrent_verifications_lose_and_double_count_no_query(models, servers):
    """A bounded load test: 8 threads verify against one server at once; the server's count of answered
    images equals the sum of the clients' counts, and every verdict equals the one run alone."""
    server = servers["victim"]
    opened = move.open_protection(models / "move")
    alone = move.verify(opened, open_suspect(server.url), seed=3)
    before = server.stats()
    verdicts: list = [None] * 8
    errors: list = []

    def verify(i: int) -> None:
        try:
            verdicts[i] = move.verify(opened, open_suspect(server.url), seed=3)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=verify, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and all(not t.is_alive() for t in threads)
    after = server.stats()
    assert after["inference_count"] - before["inference_count"] == sum(v.queries for v in verdicts)
    assert sum(v.queries for v in verdicts) == 8 * (COMPETENCE + EVIDENCE)
    assert after["execution_count"] - before["execution_count"] == 8 * 11
    assert all(v.outcome == alone.outcome and v.statistic == pytest.approx(alone.statistic, rel=1e-9) for v in verdicts)


def test_a_server_killed_mid_verification_says_what_was_sent_and_a_rerun_is_identical(models, servers, tmp_path):
    from typer.testing import CliRunner

    from modelprove.cli.main import app

    runner = CliRunner()
    command = ["verify", "--protection", str(models / "move"), "--json", str(tmp_path / "v.json")]
    died = runner.invoke(app, [*command, "--suspect", servers["dying"].url])
    assert died.exit_code == 2 and "Traceback" not in died.output
    text = " ".join(died.output.split())
    assert "cannot reach the server" in text and "2 batches (64 images) had been answered" in text
    assert "v.transcript.jsonl" in text and "rerun the same command" in text
    assert servers["dying"].process.wait(timeout=30) == 3  # the test-only fault's exit
    partial = [json.loads(line) for line in (tmp_path / "v.transcript.jsonl").read_text().splitlines()[1:]]
    assert [line.get("error") is None for line in partial] == [True, True, False]
    assert not (tmp_path / "v.json").exists()
    # The same command against a server of the same model: the same batches in the same order.
    again = runner.invoke(app, [*command, "--suspect", servers["victim"].url])
    assert again.exit_code == 0, again.output
    full = [json.loads(line) for line in (tmp_path / "v.transcript.jsonl").read_text().splitlines()[1:]]
    assert [e["request_sha256"] for e in full[:3]] == [e["request_sha256"] for e in partial]
    assert [e["response_sha256"] for e in full[:2]] == [e["response_sha256"] for e in partial[:2]]
    assert json.loads((tmp_path / "v.json").read_text())["details"]["transcript"]["batches"] == 11


def test_a_slow_server_hits_the_timeout_with_a_clear_message(models, servers):
    access = remote_access(servers["slow"].url, timeout=0.5, retries=1, backoff=0.1)
    start = time.monotonic()
    with pytest.raises(RemoteError, match=r"no answer within the timeout of 0\.5 s \(2 attempts\).*Fix: raise the timeout"):
        move.verify(move.open_protection(models / "move"), access)
    assert time.monotonic() - start < 30  # two 0.5 s attempts, not the server's 5 s delay (generous bound)


def test_servers_shut_down_cleanly_with_a_summary(servers):
    for name, sig in (("independent", signal.SIGINT), ("victim", signal.SIGTERM)):
        server = servers[name]
        answered = server.stats()
        assert server.stop(sig) == 0
        log = server.log.read_text()
        summary = log.strip().splitlines()[-1]
        assert f"{answered['execution_count']} inference requests, {answered['inference_count']} images" in summary
        assert re.search(r"#\d+ POST /v2/models/\S+/infer -> 200 [\d.]+ ms \d+ images", log)  # one line per request


# -- the app and the client in process ---------------------------------------------------------------


@pytest.fixture(scope="module")
def local_model(models):
    return served_model(models / "move" / "victim")


class Serving:
    """``app`` under uvicorn in a thread of this process, on a free loopback port."""

    def __init__(self, app):
        import socket

        import uvicorn

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert self.server.started

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.fixture
def serve_app():
    """serve_app(app) -> its base URL; every app is stopped after the test."""
    running: list[Serving] = []

    def start(app) -> str:
        running.append(Serving(app))
        return f"http://127.0.0.1:{running[-1].port}"

    yield start
    for serving in running:
        serving.close()


@pytest.fixture
def client_for(serve_app):
    def make(app, name="victim", **kwargs):
        return remote_access(f"{serve_app(app)}/v2/models/{name}", **kwargs)

    return make


def images(n: int) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))


def test_output_modes_are_applied_server_side_and_read_at_their_level(local_model, models, client_for):
    x = images(12)
    truth = torch.from_numpy(local_model.predict(x.numpy()))
    black = client_for(create_app(local_model, output="logits"))
    assert black.level == BLACK_BOX and torch.allclose(black.probabilities(x), truth, atol=1e-5)
    rounded = client_for(create_app(local_model, output="rounded:2"))
    p = rounded.probabilities(x)
    assert torch.allclose(p, truth, atol=0.005 + 1e-6) and not torch.allclose(p, truth, atol=1e-4)
    assert rounded.describe()["output"]["decimals"] == 2
    for mode in ("label", "top-k:2"):
        labels = client_for(create_app(local_model, output=mode))
        assert labels.level == LABEL_ONLY and not hasattr(labels, "probabilities")
        assert torch.equal(labels.labels(x), truth.argmax(dim=1))
    assert OutputMode.parse("top-k:3").k == 3
    with pytest.raises(Exception, match="unknown output mode"):
        OutputMode.parse("top-k:0")


def test_budget_is_enforced_before_sending_and_batches_respect_the_servers_limit(local_model, client_for):
    app = create_app(local_model, max_batch=5)
    access = client_for(app, budget=12)
    with pytest.raises(QueryBudgetError, match="budget of 12 images"):
        access.probabilities(images(13))
    assert app.state.stats.inferences == 0  # nothing was sent
    access.probabilities(images(12))
    assert app.state.stats.inferences == 3 and app.state.stats.images == 12  # 5 + 5 + 2
    assert access.transcript.summary()["batches"] == 3


def test_rate_limited_requests_are_retried(local_model, client_for):
    app = create_app(local_model, rate_limit=2.0)
    access = client_for(app, backoff=0.05)
    for _ in range(4):
        access.labels(images(1))
    assert app.state.stats.inferences == 4 and app.state.stats.rate_limited >= 1
    assert access.describe()["retried"] == app.state.stats.rate_limited


def test_metadata_checks_refuse_before_any_query(local_model, models, client_for):
    protection = move.open_protection(models / "move")
    other = ServedModel("victim", local_model.predict, (1, 32, 32), local_model.num_classes)
    with pytest.raises(SuspectError, match="takes images of shape 1x32x32"):
        move.verify(protection, client_for(create_app(other)))
    with pytest.raises(RemoteError, match="unknown model 'nope'"):
        client_for(create_app(local_model), name="nope")
    with pytest.raises(RemoteError, match="not an Open Inference Protocol model URL"):
        remote_access("http://127.0.0.1:9/predict")


def third_party(predict, *, input_shape, output: dict) -> FastAPI:
    """A minimal server of another vendor: plain OIP metadata, no modelprove parameters."""
    app = FastAPI()
    meta = {"name": "other", "platform": "sklearn", "versions": [],
            "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [-1, *input_shape]}], "outputs": [output]}

    @app.get("/v2/models/other")
    def metadata():
        return meta

    @app.post("/v2/models/other/infer")
    async def infer(request: Request):
        tensor = (await request.json())["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float64).reshape(tensor["shape"])
        y = predict(x)
        return {"model_name": "other", "outputs": [{"name": output["name"], "datatype": output["datatype"],
                                                    "shape": list(y.shape), "data": y.ravel().tolist()}]}

    return app


def test_another_vendors_undeclared_outputs_are_detected_and_recorded(local_model, client_for):
    x = images(10)
    truth = local_model.predict(x.numpy())
    flat = (784,)
    cases = {
        "probabilities": lambda a: local_model.predict(a.reshape(-1, 1, 28, 28).astype(np.float32)),
        "logits": lambda a: np.log(local_model.predict(a.reshape(-1, 1, 28, 28).astype(np.float32))) - 3.0,
        "scores": lambda a: 0.5 * local_model.predict(a.reshape(-1, 1, 28, 28).astype(np.float32)),
    }
    for content, predict in cases.items():
        app = third_party(predict, input_shape=flat, output={"name": "out", "datatype": "FP64", "shape": [-1, 4]})
        access = client_for(app, name="other")
        assert access.level == BLACK_BOX
        access.check_input((1, 28, 28), 4)
        assert np.allclose(access.probabilities(x).numpy(), truth, atol=1e-5)
        assert access.describe()["output"]["detected"] == content
    with pytest.raises(SuspectError, match="flat vectors of 784 values"):
        access.check_input((1, 32, 32), 4)
    labels = third_party(lambda a: local_model.predict(a.reshape(-1, 1, 28, 28).astype(np.float32)).argmax(1),
                         input_shape=flat, output={"name": "predict", "datatype": "INT64", "shape": [-1]})
    access = client_for(labels, name="other")
    assert access.level == LABEL_ONLY
    with pytest.raises(SuspectError, match="does not declare its number of classes"):
        access.labels(x)
    access.check_input((1, 28, 28), 4)  # a protection gives the classes
    assert np.array_equal(access.labels(x).numpy(), truth.argmax(1))


def test_preset_reuses_move_fmnists_models():
    from modelprove.bench import load_bench_config, recipe_key
    from modelprove.bench.runner import plan_grid

    data = {"dataset": "x", "defender": "d0", "attacker": "a0", "test": "t0"}
    fmnist = plan_grid(load_bench_config("move-fmnist"), data)
    sequential = plan_grid(load_bench_config("move-sequential"), data)
    assert {p["key"] for p in sequential[0].values()} <= {p["key"] for p in fmnist[0].values()}
    chains = {recipe_key(chain[-1]) for chain in fmnist[1].values()}
    assert {recipe_key(chain[-1]) for chain in sequential[1].values()} <= chains
    config = load_bench_config("move-sequential")
    assert len(sequential[2]) == 2 * len(config.seeds) * (len(config.attacks) + len(config.independent_models()))
    assert {c["suspect_key"] for c in sequential[2]} <= {c["suspect_key"] for c in fmnist[2]}
