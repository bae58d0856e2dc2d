"""The benchmark on Dask: jobs after their deps, GPU jobs on GPU workers, a killed worker's job run again,
the same records as the local executor, and the cache and results log shared by processes at once."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelprove.bench import BenchCache, load_bench_config, parse_bench_config
from modelprove.bench.executors import MALLOC_ENV, DaskExecutor, InProcessExecutor, Job, JobError, parse_cluster
from modelprove.bench.results import ResultLog
from modelprove.bench.runner import run_bench
from modelprove.cli.main import app
from modelprove.core.errors import ModelproveError

SRC = str(Path(__file__).parents[1] / "src")
ENV = {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1"}


def in_processes(target, *args, count: int = 2, timeout: float = 300) -> None:
    """``target(i, *args)`` in ``count`` processes at once. Spawned, not forked: a fork of an xdist worker that
    holds Dask's and torch's threads can copy a lock one of them held and hang the child (seen once: a
    join that timed out under load); ``timeout`` is a hang guard, not a timing."""
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=target, args=(i, *args)) for i in range(count)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout)
        assert process.exitcode == 0, f"process {processes.index(process)} exited with {process.exitcode}"


def build_racing(me: int, root: Path) -> None:
    """One process's build of a shared entry: it waits until the other's build has started too."""
    def build(out: Path) -> dict:
        (root / f"started-{me}").touch()
        deadline = time.time() + 30
        while not (root / f"started-{1 - me}").exists():
            assert time.time() < deadline, "the other build never started"
            time.sleep(0.02)
        time.sleep(0.3 * me)  # the second to finish finds the first's entry in place
        out.mkdir()
        (out / "weights").write_text(f"by {me} " * 100_000)
        return {"by": me}

    cache = BenchCache(root / "cache")
    directory, entry = cache.protection({"kind": "race", "seed": 0}, build)
    (root / f"got-{me}.json").write_text(json.dumps({"by": entry["info"]["by"], "weights": (directory / "weights").read_text()[:8],
                                                      "hits": cache.hits, "misses": cache.misses}))


def test_two_processes_building_one_cache_entry_at_once_leave_one_whole_entry(tmp_path):
    """Both builds are in flight together; both processes get the entry renamed in first, whole, and no
    staging directory is left behind."""
    in_processes(build_racing, tmp_path)
    got = [json.loads((tmp_path / f"got-{me}.json").read_text()) for me in (0, 1)]
    assert got[0]["by"] == got[1]["by"] == 0 and got[0]["weights"] == got[1]["weights"] == "by 0 by "
    assert sorted((g["hits"], g["misses"]) for g in got) == [(0, 1), (1, 0)]  # one built it, one kept it
    entries = list((tmp_path / "cache").rglob("entry.json"))
    assert len(entries) == 1 and json.loads(entries[0].read_text())["info"] == {"by": 0}
    assert (entries[0].parent / "protection" / "weights").read_text() == "by 0 " * 100_000
    assert not [p for p in (tmp_path / "cache").rglob("*") if ".partial" in p.name or "incomplete" in p.name]


def append_records(me: int, path: Path) -> None:
    log = ResultLog(path)
    for i in range(100):
        log.add({"cell": f"{me}-{i}", "scores": [float(i)] * 3000})


def test_result_lines_appended_by_processes_at_once_never_interleave(tmp_path):
    """Records far longer than a file buffer (8 KiB), appended by three processes at once: every line whole."""
    in_processes(append_records, tmp_path / "results.jsonl", count=3)
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 300
    records = [json.loads(line) for line in lines]  # raises on any interleaved line
    assert sorted(r["cell"] for r in records) == sorted(f"{p}-{i}" for p in range(3) for i in range(100))
    assert all(r["scores"] == [float(r["cell"].split("-")[1])] * 3000 for r in records)


class Recorder:
    """A work function for toy jobs: when and where each ran (pickled to the workers)."""

    def __call__(self, job: Job) -> dict:
        from distributed import get_worker

        start = time.time()
        time.sleep(0.2)
        if job.kind == "fail":
            raise JobError(f"job {job.key} failed")
        return {"worker": get_worker().name, "start": start, "end": time.time()}


@pytest.fixture(scope="module")
def gpu_and_cpu_cluster():
    """A scheduler with two in-process workers, one of them started with --resources GPU=1."""
    from distributed import Scheduler, SpecCluster, Worker

    cluster = SpecCluster(scheduler={"cls": Scheduler, "options": {"dashboard": False, "dashboard_address": ":0"}},
                          workers={"gpu": {"cls": Worker, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
                                   "cpu": {"cls": Worker, "options": {"nthreads": 1}}})
    yield cluster
    cluster.close()


def test_dask_runs_each_job_after_its_deps_and_gpu_jobs_on_the_gpu_worker(gpu_and_cpu_cluster):
    jobs = [Job("a", "train", None, resources={"GPU": 1}), Job("b", "train", None),
            Job("c", "cells", None, deps=("a", "b")), Job("d", "train", None, deps=("c",), resources={"GPU": 1}),
            *(Job(f"e{i}", "train", None, resources={"GPU": 1}) for i in range(4)),
            *(Job(f"f{i}", "cells", None) for i in range(4))]
    seen: list[str] = []
    with DaskExecutor(gpu_and_cpu_cluster.scheduler_address) as executor:
        assert executor.workers == 2 and executor.description == {"executor": "dask",
                                                                 "cluster": gpu_and_cpu_cluster.scheduler_address}
        ran = executor.run(jobs, Recorder(), lambda job, result: seen.append(job.key))
    assert sorted(seen) == sorted(job.key for job in jobs) == sorted(ran)  # each once, reported as it ended
    for job in jobs:
        assert all(ran[job.key]["start"] >= ran[dep]["end"] for dep in job.deps), job.key
        if job.resources:
            assert ran[job.key]["worker"] == "gpu", job.key


def test_a_failed_job_stops_the_run_before_its_dependents(gpu_and_cpu_cluster):
    jobs = [Job("x", "fail", None), Job("y", "train", None, deps=("x",))]
    for executor in (InProcessExecutor(), DaskExecutor(gpu_and_cpu_cluster.scheduler_address)):
        seen: list[str] = []
        with executor, pytest.raises(JobError, match="job x failed"):
            executor.run(jobs, Recorder() if isinstance(executor, DaskExecutor) else _raise, seen.append)
        assert seen == []


def _raise(job: Job):
    raise JobError(f"job {job.key} failed")


@pytest.mark.parametrize("cluster", ["local:0", "local", "tcp://host", "http://host:8786", "host:8786"])
def test_an_unusable_cluster_is_refused_with_the_fix(cluster):
    with pytest.raises(ModelproveError, match="local:2"):
        parse_cluster(cluster)


def test_cli_refuses_workers_with_cluster(tmp_path):
    both = CliRunner().invoke(app, ["bench", "smoke", "--out", str(tmp_path), "--workers", "2", "--cluster", "local:2"])
    assert both.exit_code == 2 and "give one" in both.output and "Traceback" not in both.output


def test_an_unreachable_scheduler_is_an_error_for_people():
    with pytest.raises(ModelproveError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9.*dask scheduler"):
        with DaskExecutor("tcp://127.0.0.1:9", connect_timeout=1):
            pass


def without_timings(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not k.endswith("seconds")} for r in records]


@pytest.fixture(scope="module")
def smoke_in_process(tmp_path_factory):
    """The smoke preset in this process, one job after another, from an empty cache."""
    root = tmp_path_factory.mktemp("smoke-local")
    return run_bench(load_bench_config("smoke"), root / "run", cache_dir=root / "cache", threads=1, workers=1,
                     progress=False)


@pytest.mark.slow
def test_smoke_on_a_dask_local_cluster_gives_the_local_executors_records(smoke_in_process, tmp_path):
    """`modelprove bench smoke --cluster local:2` from its own empty cache trains everything again in two
    Dask worker processes, in another order: every record equals the local executor's but for timings."""
    result = subprocess.run([sys.executable, "-m", "modelprove", "bench", "smoke", "--out", str(tmp_path / "run"),
                             "--cache", str(tmp_path / "cache"), "--threads", "1", "--cluster", "local:2"],
                            env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    total = len(smoke_in_process.records)
    progress = " ".join(result.stderr.split())  # the console wraps its lines
    assert "Dask cluster local:2, 2 workers" in progress and f"[{total}/{total}]" in progress
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    records = {r["cell"]: r for r in map(json.loads, lines)}
    assert len(lines) == len(records) == total and smoke_in_process.missing == 0
    reference = {r["cell"]: r for r in smoke_in_process.records}
    assert without_timings([records[c] for c in sorted(records)]) == without_timings(
        [reference[c] for c in sorted(reference)])
    run = json.loads((tmp_path / "run" / "runs.jsonl").read_text())
    assert run["executor"] == "dask" and run["cluster"] == "local:2"
    assert run["cache_misses"] == smoke_in_process.cache_misses > 0  # every model built once, in either
    assert json.loads((smoke_in_process.out_dir / "runs.jsonl").read_text())["executor"] == "local"


# The smallest grid whose protection trains for seconds: long enough to be killed in the middle of it.
TINY = {
    "name": "tiny", "seeds": [0], "settings": ["white-box", "black-box"],
    "data": {"dataset": "mnist-digits", "defender_limit": 400, "attacker_limit": 300, "test_limit": 200},
    "training": {"arch": "cnn_small", "epochs": 2},
    "panel": {"size": 4, "architectures": "cnn_small", "epochs": 1},
    "methods": [{"name": "move", "set": {"benign_models": 1, "m": 5, "m_black_box": 20, "test_transformed": 20,
                                         "meta_epochs": 5}}],
    "attacks": [{"label": "Direct-copy", "attack": "copy"}],
    "independents": [{"arch": "lenet5", "seeds": [200]}],
}


@pytest.mark.slow
def test_a_worker_killed_mid_job_has_its_job_run_again_and_every_cell_is_written_once(tmp_path):
    """Two worker processes of a scheduler at an address; one is killed while it builds the protection. The
    scheduler runs that job again on a worker that lives; the grid completes with every cell once, and the
    same records as the grid run in this process."""
    import dask
    from distributed import Client, LocalCluster

    config = parse_bench_config(TINY)
    with dask.config.set({"distributed.nanny.pre-spawn-environ": {
            **dask.config.get("distributed.nanny.pre-spawn-environ"), **MALLOC_ENV}}):
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    killed: list[str] = []

    def executing(client: Client, **where) -> dict[str, list[str]]:
        return client.run(lambda dask_worker: [str(ts.key) for ts in dask_worker.state.executing], **where)

    def kill_the_protections_worker(client: Client) -> None:
        deadline = time.time() + 240
        while time.time() < deadline and not killed:
            for address, keys in executing(client).items():
                if any(key.startswith("protection-") for key in keys):
                    time.sleep(0.5)  # into the job (it trains for seconds), and still in it:
                    if executing(client, workers=[address])[address] == keys:
                        os.kill(client.run(os.getpid, workers=[address])[address], signal.SIGKILL)
                        killed.extend(keys)
                        return
            time.sleep(0.1)

    try:
        with Client(cluster) as client:
            before = set(client.run(os.getpid).values())
            killer = threading.Thread(target=kill_the_protections_worker, args=(client,))
            killer.start()
            run = run_bench(config, tmp_path / "run", cache_dir=tmp_path / "cache", threads=1,
                            cluster=cluster.scheduler_address, progress=False)
            killer.join()
            after = set(client.run(os.getpid).values())
    finally:
        cluster.close()
    assert killed and killed[0].startswith("protection-"), "no worker was killed during the protection"
    assert len(before - after) == 1  # the killed process is gone (its nanny started another)
    lines = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    cells = [json.loads(line)["cell"] for line in lines]
    alone = run_bench(config, tmp_path / "alone", cache_dir=tmp_path / "alone-cache", threads=1, workers=1,
                      progress=False)
    total = len(alone.records)
    assert total == 4 and alone.missing == 0  # 2 settings x (the copy, the independent model)
    assert len(cells) == len(set(cells)) == total and run.cells_run == total and run.missing == 0
    assert without_timings(run.records) == without_timings(alone.records)
