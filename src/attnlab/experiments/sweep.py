"""Run a sweep on any concurrent.futures.Executor: local processes by default, Dask for a cluster.

Workers only train and return results; the parent alone writes to the results store, one
committed row per finished future, so killing the parent loses nothing already stored and a
re-run skips every finished run. Local workers die with the parent, even one killed with
SIGKILL: each watches the parent's pid (and asks Linux for SIGKILL when its own parent exits).
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from tqdm.auto import tqdm  # notebook widgets where available

from attnlab.experiments.config import RunConfig, SweepConfig, load_sweep
from attnlab.experiments.store import ResultStore
from attnlab.experiments.train import RunResult, TrainingDiverged, train

# How often a worker checks that the sweep process is still alive.
_PARENT_POLL_SECONDS = 0.5

Engine = Literal["local", "dask"]


def default_sweep(quick: bool = False) -> SweepConfig:
    """The committed qSA sample-complexity sweep: `quick` (about a minute on 2 cores, what tests
    use) or the default scaled-down one (about ten minutes on 2 cores)."""
    return load_sweep("qsa-quick" if quick else "qsa-default")


@dataclass
class SweepSummary:
    sweep: str
    store: str
    engine: str
    workers: int
    total: int
    skipped: int
    completed: int
    failed: int
    wall_seconds: float
    diverged: int = 0
    device: str | None = None
    failures: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _die_with(parent_pid: int) -> None:
    """Worker initializer: exit as soon as the sweep process `parent_pid` is gone.

    A pool worker's parent is the forkserver, not the sweep, and a worker busy training never
    reads the pool's (broken) pipe, so without this a SIGKILLed sweep leaves its workers training
    on. PR_SET_PDEATHSIG covers the worker's own parent; the thread covers the sweep process.
    """
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while True:
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                os._exit(1)
            except PermissionError:
                pass  # the pid exists (reused by another user's process is as good as gone; rare)
            time.sleep(_PARENT_POLL_SECONDS)

    threading.Thread(target=watch, name="attnlab-parent-watch", daemon=True).start()


def execute_run(config_json: str, runs_dir: str | None, threads: int) -> dict[str, Any]:
    """Worker entry point: train one run (resuming from its run dir if any) and return its result."""
    config = RunConfig.model_validate_json(config_json)
    if config.train.threads is None:
        torch.set_num_threads(threads)
    run_dir = Path(runs_dir) / config.run_id if runs_dir is not None else None
    return train(config, run_dir).to_dict()


def _available_cores() -> int:
    return (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    )


def _process_context() -> multiprocessing.context.BaseContext:
    """forkserver where available: workers fork from a server that imported attnlab but never ran
    torch (so no thread pools are forked, unlike plain fork), and start far faster than spawn,
    which stays the fallback. Either way a calling script needs `if __name__ == "__main__":`."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["attnlab.experiments.sweep"])
        return context
    return multiprocessing.get_context("spawn")


@contextmanager
def make_executor(
    engine: Engine = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    dask_processes: bool = True,
) -> Iterator[Executor]:
    """An Executor for `engine`. local: a ProcessPoolExecutor (forkserver or spawn workers, so no
    torch state is forked). dask: `Client(scheduler).get_executor()`, or a LocalCluster of `workers` single-
    threaded workers when no scheduler address is given (closed again on exit)."""
    workers = workers or _available_cores()
    if engine == "local":
        if scheduler is not None:
            raise ValueError("--scheduler is only used with --engine dask")
        pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_process_context(),
            initializer=_die_with,
            initargs=(os.getpid(),),
        )
        try:
            yield pool
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    elif engine == "dask":
        from distributed import Client, LocalCluster

        cluster = None
        if scheduler is None:
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=dask_processes,
                dashboard_address=None,
            )
            client = Client(cluster)
        else:
            client = Client(scheduler, timeout=30)
        try:
            yield client.get_executor(pure=False)
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
    else:
        raise ValueError(f"unknown engine '{engine}'; use 'local' or 'dask'")


def run_sweep(
    sweep: SweepConfig | str | Path,
    store: ResultStore | str | Path,
    *,
    engine: Engine = "local",
    workers: int | None = None,
    scheduler: str | None = None,
    progress: bool = False,
    runs_dir: str | Path | None = None,
    executor: Executor | None = None,
    threads_per_run: int = 1,
    dask_processes: bool = True,
    device: str | None = None,
) -> SweepSummary:
    """Run every run of `sweep` not yet finished in `store`; return counts and timings.

    `sweep` is a SweepConfig, a sweep file or a built-in name; `store` a ResultStore or a path.
    Pass `executor` to use one you manage (it is not shut down); otherwise one is made from
    `engine`, `workers` and `scheduler`. With `runs_dir`, each run checkpoints to
    runs_dir/<run_id> and an interrupted run resumes mid-training. `device` ('cpu', 'cuda',
    'auto') computes every run there; run ids do not change, and the store records the device.
    A run whose loss went non-finite is stored as 'diverged', one that raised as 'failed'.
    """
    sweep = sweep if isinstance(sweep, SweepConfig) else load_sweep(sweep)
    owned_store = not isinstance(store, ResultStore)
    results = ResultStore(store) if owned_store else store
    start = time.perf_counter()
    try:
        configs = sweep.expand()
        if device is not None:
            configs = [c.on_device(device) for c in configs]
        results.add_to_sweep(sweep.name, [c.run_id for c in configs])
        done = results.finished_ids()
        pending = [c for c in configs if c.run_id not in done]
        summary = SweepSummary(
            sweep.name,
            str(results.path),
            "custom" if executor else engine,
            workers or _available_cores(),
            len(configs),
            len(configs) - len(pending),
            0,
            0,
            0.0,
            device=device,
        )
        if pending:
            runs = str(runs_dir) if runs_dir is not None else None
            if executor is not None:
                _collect(executor, pending, runs, threads_per_run, results, summary, progress)
            else:
                with make_executor(engine, workers, scheduler, dask_processes) as owned:
                    _collect(owned, pending, runs, threads_per_run, results, summary, progress)
        summary.wall_seconds = time.perf_counter() - start
        return summary
    finally:
        if owned_store:
            results.close()


def _collect(
    executor: Executor,
    pending: list[RunConfig],
    runs_dir: str | None,
    threads: int,
    store: ResultStore,
    summary: SweepSummary,
    progress: bool,
) -> None:
    futures: dict[Future, RunConfig] = {
        executor.submit(execute_run, c.canonical_json(), runs_dir, threads): c for c in pending
    }
    bar = tqdm(
        total=len(pending),
        desc=f"sweep {summary.sweep}",
        unit="run",
        file=sys.stderr,
        disable=not progress or not sys.stderr.isatty(),
    )
    try:
        for future in as_completed(futures):
            config = futures[future]
            try:
                store.put(RunResult.from_dict(future.result()))
                summary.completed += 1
            except Exception as exc:  # a failed run is recorded and reported, the sweep goes on
                message = f"{type(exc).__name__}: {exc}"
                diverged = isinstance(exc, TrainingDiverged)
                store.put_failure(
                    config.run_id,
                    config.model_dump(mode="json"),
                    config.seed,
                    message,
                    status="diverged" if diverged else "failed",
                )
                summary.failed += 1
                summary.diverged += diverged
                summary.failures.append({"run_id": config.run_id, "error": message})
            bar.update(1)
    except BaseException:
        for future in futures:
            future.cancel()
        raise
    finally:
        bar.close()
