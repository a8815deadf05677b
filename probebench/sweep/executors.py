"""Executors: how a sweep's tasks run — here, in worker processes, or as submitit (SLURM) job arrays.

``local``: in this process, one job after another (``workers=1``), or N worker processes
(``concurrent.futures.ProcessPoolExecutor``, spawn). ``slurm``: ``submitit.AutoExecutor`` job arrays (partition,
GPUs, time limit, ``array_parallelism``; jobs are :class:`submitit.helpers.Checkpointable`, so a pre-empted or
timed-out job is requeued — pre-emptions always, time-outs up to ``max_num_timeout`` times — and resumes from
the cache shards and result rows already written). ``submitit-local`` / ``submitit-debug``: the same submitit
code path with its ``LocalExecutor`` (one subprocess per job) or ``DebugExecutor`` (in-process).
Multi-GPU extraction is not split inside a sweep job: run ``torchrun --nproc-per-node N -m probebench.cli
extract ...`` (ranks write disjoint shards) for the big extraction configs first; the sweep then finds those
caches complete. Locks are ``fcntl.flock`` files, which work on local disks and on shared file systems mounted
with flock support (NFSv4, Lustre with ``-o flock``).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

import submitit
from submitit.helpers import Checkpointable

from probebench.core.errors import ProbebenchError
from probebench.sweep.jobs import JobResult, Task, reason
from probebench.sweep.spec import SlurmConfig, Sweep

if TYPE_CHECKING:
    from tqdm import tqdm

    from probebench.sweep.generation import GenerationSweep

EXECUTORS = ("local", "slurm", "submitit-local", "submitit-debug")


def _run_task(task: Task) -> JobResult:
    """Module-level entry point of worker processes."""
    return task.run()


class SweepJob(Checkpointable):
    """The callable submitit runs for every task. Checkpointable: submitit requeues it on pre-emption or
    time-out, calling ``checkpoint`` (the default resubmits the same task); the task resumes from the cache
    shards and result rows already written, so nothing else needs saving."""

    def __call__(self, task: Task) -> JobResult:
        return task.run()


class Backend:
    """Runs tasks and yields their results as they complete; ``cancel`` stops what has not finished."""

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        raise NotImplementedError

    def cancel(self) -> None:
        pass

    def close(self) -> None:
        pass


class SequentialBackend(Backend):
    """In this process, one task after another (the default; monkeypatchable in tests)."""

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        for t in tasks:
            yield t.run()


class PoolBackend(Backend):
    """N worker processes (``concurrent.futures.ProcessPoolExecutor``, spawn: safe with torch's threads)."""

    def __init__(self, workers: int):
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        futures = {self.pool.submit(_run_task, t): t for t in tasks}
        for fut in as_completed(futures):
            t = futures[fut]
            if fut.cancelled():
                yield JobResult(t.kind, t.name, "cancelled", "cancelled (--fail-fast)")
                continue
            try:
                yield fut.result()
            except Exception as e:  # the worker died: killed, out of memory ...
                yield JobResult(t.kind, t.name, "failed", "worker process died: " + reason(e))

    def cancel(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class SubmititBackend(Backend):
    """submitit job arrays: ``cluster`` is ``slurm``, ``local`` (LocalExecutor: a subprocess per job) or
    ``debug`` (DebugExecutor: in this process). The same code path, so tests cover what SLURM runs."""

    def __init__(self, cluster: str, folder: Path, slurm: SlurmConfig, job_name: str, poll_s: float):
        kwargs = {} if cluster == "debug" else {f"{cluster}_max_num_timeout": slurm.max_num_timeout}
        try:
            self.executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster, **kwargs)
        except RuntimeError as e:  # e.g. 'Could not detect "srun"' off a cluster
            raise ProbebenchError(
                f"--executor {'slurm' if cluster == 'slurm' else 'submitit-' + cluster}: {e} "
                "(--executor submitit-local runs the same jobs on this machine)."
            ) from None
        params: dict[str, Any] = {"timeout_min": slurm.timeout_min, "name": job_name}
        if cluster == "slurm":
            params.update(gpus_per_node=slurm.gpus_per_node, cpus_per_task=slurm.cpus_per_task)
            if slurm.mem_gb is not None:
                params["mem_gb"] = slurm.mem_gb
            params["slurm_array_parallelism"] = slurm.array_parallelism
            for key in ("partition", "account", "qos", "constraint"):
                if getattr(slurm, key) is not None:
                    params[f"slurm_{key}"] = getattr(slurm, key)
            if slurm.setup:
                params["slurm_setup"] = list(slurm.setup)
            if slurm.additional:
                params["slurm_additional_parameters"] = dict(slurm.additional)
        self.executor.update_parameters(**params)
        self.poll_s = poll_s
        self.jobs: list[Any] = []

    def map(self, tasks: list[Task]) -> Iterator[JobResult]:
        if not tasks:
            return
        self.jobs = self.executor.map_array(SweepJob(), tasks)
        by_id = {id(j): t for j, t in zip(self.jobs, tasks)}
        for job in submitit.helpers.as_completed(self.jobs, poll_frequency=self.poll_s):
            t = by_id[id(job)]
            try:
                yield job.result()
            except Exception as e:  # job killed, cancelled, node failure ...
                status = (
                    "cancelled" if getattr(job, "state", "") in ("CANCELLED", "INTERRUPTED") else "failed"
                )
                yield JobResult(t.kind, t.name, status, f"job {job.job_id}: " + reason(e))

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel(check=False)


def run_cells(
    backend: Backend, tasks: list[Task], results: dict[str, JobResult], bar: tqdm, fail_fast: bool
) -> None:
    """Run cell tasks on ``backend``, recording each result in ``results`` (by task name) as it completes; with
    ``fail_fast`` the first failure cancels the rest, which are recorded as ``cancelled``."""
    for r in backend.map(tasks):
        results[r.name] = r
        bar.update()
        bar.set_postfix(failed=sum(x.status == "failed" for x in results.values()), refresh=False)
        if r.status == "failed" and fail_fast:
            backend.cancel()
            break
    for t in tasks:
        results.setdefault(t.name, JobResult(t.kind, t.name, "cancelled", "not run (--fail-fast)"))


def make_backend(
    executor: str, workers: int, sweep: Sweep | GenerationSweep, poll_s: float | None = None
) -> Backend:
    if executor not in EXECUTORS:
        raise ProbebenchError(f"Unknown executor {executor!r}. Valid: {', '.join(EXECUTORS)}.")
    if workers < 1:
        raise ProbebenchError(f"--workers must be >= 1, got {workers}.")
    if executor == "local":
        return SequentialBackend() if workers == 1 else PoolBackend(workers)
    cluster = {"slurm": "slurm", "submitit-local": "local", "submitit-debug": "debug"}[executor]
    folder = sweep.dir.expanduser().resolve() / "submitit"
    poll = poll_s if poll_s is not None else (30.0 if cluster == "slurm" else 1.0)
    return SubmititBackend(cluster, folder, sweep.slurm, f"probebench-{sweep.name}", poll)
