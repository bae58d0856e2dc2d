"""Who runs the benchmark's jobs: this process, or the worker processes of a Dask cluster.

:mod:`modelprove.bench.runner` cuts a grid into jobs (the models every protection shares, each
protection, each stage of each suspect, the verification of each suspect's cells). A :class:`Job`
names the jobs it needs (``deps``) and the worker resources it needs (``resources``, e.g.
``{"GPU": 1}``). An executor runs every job after its deps, preferring the earlier of two ready jobs,
and hands each result to ``on_result`` in this process as the job finishes: the coordinator writes the
results log and prints the progress, the workers only build and verify.

- :class:`InProcessExecutor`: one job after another in this process (``--workers 1``).
- :class:`DaskExecutor`: a Dask ``distributed`` cluster: ``local:N`` starts a LocalCluster of N
  one-thread worker processes here (the local executor with ``--workers N``, and ``--cluster local:N``);
  ``tcp://HOST:8786`` uses a running scheduler and whatever workers join it (SLURM, PBS through
  dask-jobqueue, Kubernetes through dask-kubernetes). A worker killed mid-job has its job run again
  on another worker (the scheduler's ``allowed-failures``); a job that raises is tried once more.
"""

from __future__ import annotations

import hashlib
import logging
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from modelprove.core.errors import ModelproveError
from modelprove.core.progress import console

# glibc reads these at process start: they spare tens of thousands of page faults per training step
# (../CPU-NOTES). distributed's nanny sets MALLOC_TRIM_THRESHOLD_=65536 by default, 64 KiB, which brings
# them back. A user's own environment wins (the nanny reads os.environ first).
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(4 * 1024**3), "MALLOC_TRIM_THRESHOLD_": str(4 * 1024**3)}


@dataclass(frozen=True)
class Job:
    """One unit of work: ``kind`` and ``payload`` say what (the runner's), ``deps`` the keys of the jobs
    that must finish first, ``resources`` what a Dask worker must have to take it (e.g. ``{"GPU": 1}``)."""

    key: str
    kind: str
    payload: Any
    deps: tuple[str, ...] = ()
    resources: Mapping[str, float] = field(default_factory=dict)


class JobError(Exception):
    """A job's error as text, so that it crosses processes (ModelproveError's keyword-only constructor
    does not survive unpickling)."""


class Executor(Protocol):
    """Runs jobs; usable once entered (``with executor:``), when ``workers`` and ``description`` hold."""

    workers: int  # worker processes (for the estimate of the time left)
    description: dict[str, Any]  # what runs.jsonl records: {"executor": ..., "cluster": ...}
    in_process: bool  # work runs in this process (it may be a bound method); else it is pickled to workers

    def __enter__(self) -> Executor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, jobs: Sequence[Job], work: Callable[[Job], Any],
            on_result: Callable[[Job, Any], None]) -> dict[str, Any]:
        """``work(job)`` for every job, each after its deps -> results by job key; ``on_result(job, result)``
        is called here as each finishes. The first job that fails stops the run and raises its error."""
        ...


def check_order(jobs: Sequence[Job]) -> None:
    """Every job's deps are earlier jobs of the list: the list itself is then a valid order to run them."""
    seen: set[str] = set()
    for job in jobs:
        if job.key in seen:
            raise ValueError(f"two jobs have the key {job.key!r}")
        missing = [dep for dep in job.deps if dep not in seen]
        if missing:
            raise ValueError(f"job {job.key!r} needs {missing[0]!r}, which is not an earlier job")
        seen.add(job.key)


class InProcessExecutor:
    """Every job here, one after another, in the list's order (each job's deps come before it)."""

    workers = 1
    in_process = True

    def __init__(self) -> None:
        self.description: dict[str, Any] = {"executor": "local", "cluster": None}

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, jobs: Sequence[Job], work: Callable[[Job], Any],
            on_result: Callable[[Job, Any], None]) -> dict[str, Any]:
        check_order(jobs)
        results: dict[str, Any] = {}
        for job in jobs:
            results[job.key] = work(job)
            on_result(job, results[job.key])
        return results


def parse_cluster(cluster: str) -> tuple[str, int | str]:
    """``local:N`` -> ("local", N); ``tcp://HOST:PORT`` (or tls://) -> ("address", the address)."""
    local = re.fullmatch(r"local:(\d+)", cluster.strip())
    if local and int(local.group(1)) >= 1:
        return "local", int(local.group(1))
    if re.fullmatch(r"(tcp|tls)://[^/\s]+:\d+", cluster.strip()):
        return "address", cluster.strip()
    raise ModelproveError(f"--cluster {cluster!r} is neither local:N nor a scheduler address.",
                          fix="pass --cluster local:2 (a Dask LocalCluster of 2 worker processes here) or "
                              "--cluster tcp://HOST:8786 (the address `dask scheduler` prints).")


def _modelprove_version() -> str:
    import modelprove

    return modelprove.__version__


def _call(work: Callable[[Job], Any], job: Job, *_deps_done: Any) -> Any:
    """A task: the deps' results arrive as arguments only so that Dask runs it after them."""
    return work(job)


class DaskExecutor:
    """Jobs as tasks of a Dask cluster: a LocalCluster here (``local:N``) or a running scheduler.

    Each job is one task that depends on the tasks of its deps and has a priority from its place in the
    list, so the scheduler starts the earlier of two ready jobs. Workers take jobs that declare
    ``resources`` only when they were started with them (``dask worker ... --resources GPU=1``); a
    LocalCluster's workers declare none, so here those jobs run on any worker.
    """

    in_process = False

    def __init__(self, cluster: str, *, retries: int = 1, executor: str = "dask", connect_timeout: float = 20):
        self.kind, self.target = parse_cluster(cluster)
        self.retries, self.connect_timeout = retries, connect_timeout
        self.description: dict[str, Any] = {"executor": executor, "cluster": None if executor == "local" else cluster}
        self.workers = self.target if self.kind == "local" else 1
        self._cluster = None
        self._client = None

    def __enter__(self) -> DaskExecutor:
        import dask
        from distributed import Client, LocalCluster

        try:
            if self.kind == "local":
                environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **MALLOC_ENV}
                with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                    # One job at a time per process (its torch threads are the runner's --threads); processes,
                    # not threads: the jobs are Python-heavy training loops. No dashboard: it needs bokeh.
                    self._cluster = LocalCluster(n_workers=self.target, threads_per_worker=1, processes=True,
                                                 dashboard_address=None)
                self._client = Client(self._cluster)
            else:
                self._client = Client(self.target, timeout=self.connect_timeout)
        except OSError as exc:
            self.__exit__()
            raise ModelproveError(f"cannot reach the Dask scheduler at {self.target}: {exc}.",
                                  fix="start one (`dask scheduler`) and workers (`dask worker ADDRESS`), or check "
                                      "the address; --cluster local:N runs a cluster on this machine.") from None
        if self.kind == "address":  # the workers unpickle jobs that name modelprove's classes
            fix = "install the same modelprove in every worker's environment."
            try:
                versions = self._client.run(_modelprove_version)
            except Exception as exc:  # a worker without modelprove cannot even unpickle the function
                self.__exit__()
                raise ModelproveError(f"a Dask worker of {self.target} cannot import modelprove: {exc}.", fix=fix) from None
            wrong = {address: version for address, version in versions.items() if version != _modelprove_version()}
            if wrong:
                address, version = next(iter(wrong.items()))
                self.__exit__()
                raise ModelproveError(f"the Dask worker {address} has modelprove {version}, this process "
                                      f"{_modelprove_version()}.", fix=fix)
            threads = self._client.nthreads()
            if not threads:
                console.print(f"no worker has joined {self.target} yet: the jobs wait for the first.", highlight=False)
            elif max(threads.values()) > 1:
                console.print("a worker process runs one modelprove job at a time, whatever its threads: start "
                              "workers with --nthreads 1 (and --nworkers for more of them).", highlight=False)
            self.workers = max(1, len(threads))
        return self

    def __exit__(self, *exc: object) -> None:
        if self._client is not None:
            self._client.close()
        if self._cluster is not None:
            # A worker process that has loaded torch can take more than the nanny's 4 s to exit on a busy
            # machine; the nanny then kills it and warns. Every result is in by now: nothing to warn about.
            nanny = logging.getLogger("distributed.nanny")
            level = nanny.level
            nanny.setLevel(logging.ERROR)
            try:
                self._cluster.close()
            finally:
                nanny.setLevel(level)
        self._client = self._cluster = None

    def run(self, jobs: Sequence[Job], work: Callable[[Job], Any],
            on_result: Callable[[Job, Any], None]) -> dict[str, Any]:
        from distributed import as_completed
        from distributed.scheduler import KilledWorker

        check_order(jobs)
        if self._client is None:
            raise RuntimeError("DaskExecutor.run outside `with executor:`")
        client, run = self._client, uuid.uuid4().hex[:8]  # keys of this run only: a shared cluster has others
        futures: dict[str, Any] = {}
        by_task: dict[str, Job] = {}
        for place, job in enumerate(jobs):
            task = f"{job.kind}-{hashlib.sha256(job.key.encode()).hexdigest()[:16]}-{run}"
            futures[job.key] = client.submit(
                _call, work, job, *(futures[dep] for dep in job.deps), key=task, pure=False,
                priority=len(jobs) - place, retries=self.retries,
                resources=dict(job.resources) if job.resources and self.kind == "address" else None)
            by_task[task] = job
        results: dict[str, Any] = {}
        try:
            for future in as_completed(list(futures.values())):
                job = by_task[future.key]
                try:
                    results[job.key] = future.result()
                except KilledWorker:
                    raise ModelproveError(
                        f"job {job.kind} {job.key} was running on a worker that died each time it was tried.",
                        fix="give the workers more memory (dask worker --memory-limit) and see their logs; rerun "
                            "the same command to resume: the cache and the results keep what finished.") from None
                on_result(job, results[job.key])
        finally:
            client.cancel(list(futures.values()))
        return results


def make_executor(cluster: str | None, workers: int) -> Executor:
    """``--cluster`` given: the Dask executor on it; else the local executor: this process for one
    worker, a LocalCluster of ``workers`` processes for more. On 2 cores two 1-thread processes train
    about twice as fast as one (../CPU-NOTES: 1.6x from a second thread): the grid's models are many and
    small. The LocalCluster replaced a process pool of the runner's own: a second slower to start and
    stop, and it runs a dead worker's job again where the pool waited for it forever."""
    if cluster:
        return DaskExecutor(cluster)
    if workers <= 1:
        return InProcessExecutor()
    return DaskExecutor(f"local:{workers}", executor="local")


__all__ = ["MALLOC_ENV", "DaskExecutor", "Executor", "InProcessExecutor", "Job", "JobError", "check_order",
           "make_executor", "parse_cluster"]
