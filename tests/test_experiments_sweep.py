"""Sweeps for real: local process pools, a Dask LocalCluster, a parent killed with SIGKILL and
resumed, failures recorded, the committed quick sweep, the CLI and the example script."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.experiments import ResultStore, default_sweep, run_sweep
from attnlab.experiments.analysis import samples_to_threshold, summarise

from helpers import last_json, tiny_sweep

REPO = Path(__file__).resolve().parents[1]


def metrics_by_id(path) -> dict[str, dict]:
    with ResultStore(path) as store:
        return {r["run_id"]: r["metrics"] for r in store.records()}


@pytest.mark.slow
def test_local_sweep_runs_everything_once_and_skips_it_next_time(tmp_path):
    sweep = tiny_sweep()
    store = tmp_path / "r.sqlite"
    first = run_sweep(sweep, store, workers=2, runs_dir=tmp_path / "runs")
    assert (first.total, first.skipped, first.completed, first.failed) == (8, 0, 8, 0)
    assert set(metrics_by_id(store)) == {c.run_id for c in sweep.expand()}
    again = run_sweep(sweep, store, workers=2)
    assert (again.skipped, again.completed) == (8, 0)
    with ResultStore(store) as results:
        assert results.count() == 8 and results.sweeps() == {"tiny": 8}


@pytest.mark.slow
def test_dask_engine_gives_the_same_results_as_local_processes(tmp_path):
    sweep = tiny_sweep(seeds=(0,))
    local, dask = tmp_path / "local.sqlite", tmp_path / "dask.sqlite"
    run_sweep(sweep, local, engine="local", workers=2)
    summary = run_sweep(sweep, dask, engine="dask", workers=2, dask_processes=False)
    assert (summary.engine, summary.completed, summary.failed) == ("dask", 4, 0)
    assert metrics_by_id(dask) == metrics_by_id(local)


@pytest.mark.slow
def test_a_failing_run_is_recorded_and_the_rest_complete(tmp_path):
    sweep = tiny_sweep(seeds=(0,), grids=[{"task.params.q": [2, 9]}])  # q=9 > N=6 cannot be sampled
    store = tmp_path / "r.sqlite"
    summary = run_sweep(sweep, store, workers=1)
    assert (summary.completed, summary.failed) == (1, 1)
    assert "q <= N" in summary.failures[0]["error"]
    with ResultStore(store) as results:
        failed = results.records(status="failed")
    assert [r["run_id"] for r in failed] == [summary.failures[0]["run_id"]]
    # failed runs are retried by the next invocation (and fail again here)
    assert run_sweep(sweep, store, workers=1).failed == 1


_KILLABLE = """
import sys
from attnlab.experiments import SweepConfig, run_sweep
if __name__ == "__main__":
    sweep = SweepConfig.model_validate_json(open(sys.argv[1]).read())
    run_sweep(sweep, sys.argv[2], workers=1)
"""


@pytest.mark.slow
def test_sweep_parent_killed_with_sigkill_resumes_without_loss_or_duplicates(tmp_path):
    sweep = tiny_sweep(name="killed", seeds=(0, 1, 2, 3), max_steps=200, n_train=(64,))
    (tmp_path / "sweep.json").write_text(sweep.model_dump_json())
    (tmp_path / "killable.py").write_text(_KILLABLE)
    store = tmp_path / "r.sqlite"
    parent = subprocess.Popen(
        [sys.executable, str(tmp_path / "killable.py"), str(tmp_path / "sweep.json"), str(store)],
        start_new_session=True,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if store.exists():
                with sqlite3.connect(store, timeout=5) as db:
                    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
                    if (
                        "runs" in tables
                        and db.execute("SELECT COUNT(*) FROM runs").fetchone()[0] >= 2
                    ):
                        break
            assert parent.poll() is None, parent.stderr.read().decode()
            time.sleep(0.05)
        else:
            pytest.fail("the sweep stored no run within 60 s")
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
    finally:
        try:  # the orphaned pool worker shares the session; end it too
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        parent.stderr.close()
    assert parent.returncode == -signal.SIGKILL
    before = metrics_by_id(store)
    total = len(sweep.expand())
    assert 2 <= len(before) < total, "kill the parent while runs remain, or the test proves nothing"
    resumed = run_sweep(sweep, store, workers=2)
    assert resumed.skipped == len(before) and resumed.completed == total - len(before)
    after = metrics_by_id(store)
    assert set(after) == {c.run_id for c in sweep.expand()}
    assert {k: after[k] for k in before} == before
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (
            total,
            total,
        )


@pytest.mark.slow
def test_quick_sweep_attention_reaches_the_threshold_first(tmp_path):
    """The committed quick sweep (what CI runs): attention needs fewer qSA samples than LSTM / MLP."""
    summary = run_sweep(default_sweep(quick=True), tmp_path / "q.sqlite", workers=2)
    assert summary.failed == 0 and summary.completed == summary.total
    with ResultStore(tmp_path / "q.sqlite") as store:
        needs = {e["arch"]: e for e in samples_to_threshold(summarise(store.records()))}
    attention = needs["attention"]["samples_needed"]
    assert attention is not None
    for arch in ("lstm", "mlp"):
        other = needs[arch]["samples_needed"]
        assert other is None or other > attention


def _cli(*args: str):
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


@pytest.mark.slow
def test_cli_train_sweep_results(tmp_path):
    run = tiny_sweep().expand()[0]
    (tmp_path / "run.json").write_text(run.model_dump_json())
    code, out = _cli(
        "train", str(tmp_path / "run.json"), "--json", "--run-dir", str(tmp_path / "run")
    )
    assert code == 0, out
    trained = last_json(out)
    assert trained["run_id"] == run.run_id and trained["status"] == "ok"

    (tmp_path / "sweep.json").write_text(tiny_sweep(seeds=(0,)).model_dump_json())
    store = str(tmp_path / "r.sqlite")
    code, out = _cli(
        "sweep", str(tmp_path / "sweep.json"), "--store", store, "--workers", "2", "--json"
    )
    assert code == 0, out
    assert last_json(out)["completed"] == 4
    assert (tmp_path / "r.runs").is_dir()

    code, out = _cli("results", "show", "--store", store, "--json")
    shown = last_json(out)
    assert code == 0 and len(shown["summary"]) == 4
    code, out = _cli("results", "show", "--store", store)
    assert code == 0 and "samples to reach the threshold" in out
    for name in ("all.csv", "all.parquet"):
        code, out = _cli("results", "export", str(tmp_path / name), "--store", store, "--json")
        assert code == 0 and last_json(out)["rows"] == 4
    code, out = _cli(
        "results", "plot", "--store", store, "--out", str(tmp_path / "plots"), "--json"
    )
    assert code == 0, out
    assert Path(last_json(out)["error_vs_samples"]).stat().st_size > 1000


def test_cli_errors_are_clean(tmp_path):
    for args in (
        ["train", "no-such-config"],
        ["results", "show", "--store", str(tmp_path / "none.sqlite")],
        [
            "sweep",
            "qsa-quick",
            "--engine",
            "local",
            "--scheduler",
            "tcp://x:1",
            "--store",
            str(tmp_path / "r.sqlite"),
        ],
        ["results", "export", str(tmp_path / "x.xlsx"), "--store", str(tmp_path / "none.sqlite")],
    ):
        code, out = _cli(*args)
        assert code == 2, (args, out)
        assert "Traceback" not in out and "error" in out


@pytest.mark.slow
def test_example_script_runs():
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "examples" / "train_qsa.py"),
            "--n-train",
            "64",
            "--steps",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "attention" in done.stdout and "lstm" in done.stdout and "mlp" in done.stdout


def test_workers_die_with_a_sigkilled_sweep(tmp_path):
    psutil = pytest.importorskip("psutil")
    endless = [
        {
            "model.arch": ["attention"],
            "train.n_train": [64],
            "train.max_steps": [10**7],
            "train.patience": [10**6],
            "train.schedule": ["constant"],
        }
    ]
    sweep = tiny_sweep(name="orphans", seeds=(0, 1), grids=endless)
    (tmp_path / "sweep.json").write_text(sweep.model_dump_json())
    (tmp_path / "killable.py").write_text(_KILLABLE.replace("workers=1", "workers=2"))
    parent = subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "killable.py"),
            str(tmp_path / "sweep.json"),
            str(tmp_path / "r.sqlite"),
        ],
        start_new_session=True,
        stderr=subprocess.DEVNULL,
    )
    try:
        me = psutil.Process(parent.pid)
        deadline = time.monotonic() + 90
        workers: list = []
        while time.monotonic() < deadline and len(workers) < 2:
            workers = [p for p in me.children(recursive=True) if p.ppid() != parent.pid]
            time.sleep(0.2)
        assert len(workers) >= 2, "the sweep started no pool workers"
        time.sleep(2)  # let them get into training
        family = me.children(recursive=True)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        _, alive = psutil.wait_procs(family, timeout=15)
        alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
        assert not alive, (
            f"left behind after kill -9 of the sweep: {[p.cmdline()[:3] for p in alive]}"
        )
    finally:
        try:
            os.killpg(parent.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _write(path, text: str):
    path.write_text(text)
    return str(path)


def test_cli_bad_paths_and_configs_are_one_clear_error(tmp_path):
    garbage = _write(tmp_path / "garbage.sqlite", "this is not a database\n" * 100)
    existing = _write(tmp_path / "a-file", "x")
    run = tiny_sweep().expand()[0]
    run_file = _write(tmp_path / "run.json", run.model_dump_json())
    sweep_file = _write(tmp_path / "sweep.json", tiny_sweep(seeds=(0,)).model_dump_json())
    no_seeds = _write(
        tmp_path / "no-seeds.json",
        tiny_sweep().model_dump_json().replace('"seeds":[0,1]', '"seeds":[]'),
    )
    inf_lr = _write(
        tmp_path / "inf.json", run.model_dump_json().replace('"lr":0.003', '"lr":Infinity')
    )
    cases = [
        (["sweep", sweep_file, "--store", garbage], "not an attnlab results store"),
        (["results", "show", "--store", garbage], "not an attnlab results store"),
        (
            ["results", "export", str(tmp_path / "missing" / "dir" / "x.csv"), "--store", garbage],
            "does not exist",
        ),
        (["results", "plot", "--out", existing, "--store", garbage], "existing file"),
        (["train", run_file, "--run-dir", existing], "existing file"),
        (["sweep", no_seeds, "--store", str(tmp_path / "r.sqlite")], "seeds is empty"),
        (["train", inf_lr], "lr"),
    ]
    for args, message in cases:
        code, out = _cli(*args)
        assert code == 2, (args, out)
        assert "Traceback" not in out and message in " ".join(out.split()), (args, out)
    assert not (tmp_path / "r.sqlite").exists() and (
        tmp_path / "garbage.sqlite"
    ).read_text().startswith("this is")


def test_cli_sweep_exits_non_zero_when_runs_fail(tmp_path):
    sweep = tiny_sweep(seeds=(0,), grids=[{"task.params.q": [2, 9]}])  # q=9 > N=6 cannot be sampled
    code, out = _cli(
        "sweep",
        _write(tmp_path / "s.json", sweep.model_dump_json()),
        "--store",
        str(tmp_path / "r.sqlite"),
        "--workers",
        "1",
    )
    assert code == 1, out
    assert "1 of 2 runs failed" in " ".join(out.split())


def test_results_show_fits_80_columns_and_says_not_reached(tmp_path):
    sweep = tiny_sweep(
        seeds=(0, 1),
        max_steps=8,
        grids=[{"model.arch": ["attention", "mlp"], "train.n_train": [16, 32]}],
    )
    store = str(tmp_path / "r.sqlite")
    assert run_sweep(sweep, store, workers=2).failed == 0
    code, out = _cli("results", "show", "--store", store)
    assert code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "None" not in out
    with ResultStore(store) as results:
        from attnlab.experiments.thresholds import sample_needs

        needs = sample_needs(results.records())
    # an MLP trained 8 steps never gets within 1/(2q) = 0.25 worst case: the table must say so
    assert any(n["arch"] == "mlp" and n["max"]["estimate"] is None for n in needs)
    assert "not reached" in out
