"""The committed training grid (benchmarks/results/training-grid*): what the export holds is a real
run of the committed configs, every cell has at least 3 seeds, and the tables and the verdict in
training-grid.md / training-grid.json are what the exported records give when recomputed.

These tests read the committed files; they fail (not skip) when the export is missing, since the
export is part of the repository. Regenerate with
`python benchmarks/training.py --grid STORE --runs-dir RUNS`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import pytest

from attnlab.experiments.config import RunConfig, load_sweep
from attnlab.experiments.store import load_records
from attnlab.experiments.thresholds import width_needs
from attnlab.report.grid_tables import (
    GRID_SWEEPS,
    bracketing_table,
    floor_table,
    match3_summary,
    match3_table,
    samples_table,
    success_matrix,
    throughput_table,
    width_table,
)
from attnlab.report.training import COMMITTED, QSA_SWEEPS, judge, verdict

RESULTS = COMMITTED.parent
MIN_SEEDS = 3


@pytest.fixture(scope="module")
def records():
    assert COMMITTED.exists(), (
        f"{COMMITTED} is missing: run the grid sweeps and `benchmarks/training.py --grid STORE`"
    )
    return load_records(COMMITTED)


@pytest.fixture(scope="module")
def report_text():
    return (RESULTS / "training-grid.md").read_text()


def _cell(record) -> str:
    """A cell: everything of the run's configuration but the seed and the execution settings."""
    config = {k: v for k, v in record["config"].items() if k != "seed"}
    train = {k: v for k, v in config["train"].items() if k not in ("device", "threads")}
    return json.dumps({**config, "train": train}, sort_keys=True)


def test_every_exported_run_is_a_finished_cpu_run_of_a_committed_config(records):
    members = {name: {c.run_id for c in load_sweep(name).expand()} for name in GRID_SWEEPS}
    assert len(records) == len({r["run_id"] for r in records}) > 0
    for r in records:
        assert r["status"] == "ok" and r["device"] == "cpu"
        # the stored config hashes to the stored id, so the record is what that config trained
        assert RunConfig.model_validate(r["config"]).run_id == r["run_id"]
        assert r["sweeps"] and set(r["sweeps"]) <= set(GRID_SWEEPS)
        assert all(r["run_id"] in members[name] for name in r["sweeps"])
        assert r["metrics"]["stop_reason"] in ("plateau", "budget")
        assert r["metrics"]["steps"] <= r["config"]["train"]["max_steps"]
        assert r["timings"]["cpu_seconds"] > 0


def test_every_cell_has_at_least_three_seeds(records):
    seeds = defaultdict(set)
    for r in records:
        seeds[_cell(r)].add(r["seed"])
    thin = [cell for cell, s in seeds.items() if len(s) < MIN_SEEDS]
    assert not thin, f"{len(thin)} cells with fewer than {MIN_SEEDS} seeds, e.g. {thin[0]}"


def test_threshold_flags_are_what_the_errors_say(records):
    qsa = [r for r in records if r["config"]["task"]["name"] == "qsa"]
    assert qsa
    for r in qsa:
        q = r["config"]["task"]["params"]["q"]
        m = r["metrics"]
        assert m["threshold"] == pytest.approx(1 / (2 * q))
        assert m["reached_threshold"] == (m["max_error"] <= m["threshold"])
        assert 0 <= m["mean_error"] <= m["max_error"]


def test_samples_needed_have_three_seeds_and_intervals_where_no_seed_is_censored(records):
    needs = judge(records)["needs"]
    assert {n["task_params"]["N"] for n in needs if n["arch"] == "attention"} >= {16, 32}
    for n in needs:
        for key in ("max", "mean"):
            need = n[key]
            assert need["seeds"] >= MIN_SEEDS, n["model"]
            if set(need["per_seed_kind"]) == {"measured"}:
                assert math.isfinite(need["low"]) and math.isfinite(need["high"])
                assert need["low"] <= need["estimate"] <= need["high"]
            if set(need["per_seed_kind"]) == {"more than"}:
                assert need["estimate"] is None and need["text"].startswith("not reached")


def test_which_cells_reached_the_threshold_is_what_the_records_say(records):
    """A seed of a (setting, model) reaches 1/(2q) at some size iff one of its runs did."""
    judged = judge(records)
    needs = judged["needs"]
    # the runs the needs were read from: a cell trained again with a longer step floor replaces
    # the shorter one (and no run is both judged and replaced)
    qsa = judged["records"]
    assert not {r["run_id"] for r in qsa} & {r["run_id"] for r in judged["superseded"]}
    for n in needs:
        runs = [
            r
            for r in qsa
            if r["config"]["task"]["params"] == n["task_params"]
            and r["config"]["model"]["arch"] == n["arch"]
            and r["config"]["model"]["width"] == n["width"]
        ]
        by_seed = defaultdict(list)
        for r in runs:
            by_seed[r["seed"]].append(r["metrics"]["reached_threshold"])
        never = sum(not any(v) for v in by_seed.values())
        assert n["max"]["per_seed_kind"].count("more than") == never, n["model"]


def test_the_committed_tables_are_the_ones_the_records_give(records, report_text):
    judged = judge(records)
    widths = [w for w in width_needs(_in(records, "qsa-width-grid")) if len(w["widths_tried"]) > 1]
    assert widths and all(len(w["per_seed"]) >= MIN_SEEDS for w in widths)
    qsa = [r for r in records if set(r["sweeps"]) & set(QSA_SWEEPS)]
    tables = (
        samples_table(judged["needs"])
        + success_matrix(judged["needs"])
        + width_table(widths)
        + match3_summary(records)
        + match3_table(records)
        + bracketing_table(qsa)
        + throughput_table(records)[0]
    )
    if judged["superseded"]:
        tables += floor_table(judged["superseded"], judged["records"])
    for line in tables:
        assert line in report_text, line


def test_the_baselines_bracket_the_ffn_bound_at_more_than_one_n(records):
    """Issue 11's bracketing: MLPs below and above N d'/2, at every N where baselines ran, and at
    two training-set sizes at the largest of them."""
    mlp = [r for r in records if r["config"]["model"]["arch"] == "mlp"]
    sides = defaultdict(set)
    sizes = defaultdict(set)
    for r in mlp:
        p = r["config"]["task"]["params"]
        bound = p["N"] * p["d_prime"] / 2
        sides[p["N"]].add(r["config"]["model"]["width"] > bound)
        sizes[p["N"]].add(r["config"]["train"]["n_train"])
    assert len(sides) >= 2 and all(s == {True, False} for s in sides.values()), dict(sides)
    assert len(sizes[max(sizes)]) >= 2, dict(sizes)


def test_the_baselines_bracket_the_rnn_bound_at_some_n(records):
    """Issue 11's RNN side: at some N a one-pass RNN holds fewer float32 state bits than (N-1)/2
    and another more, both trained (an LSTM carries h and c, a GRU h)."""
    sides = defaultdict(set)
    for r in records:
        model = r["config"]["model"]
        if model["arch"] in ("lstm", "gru") and not model["bidirectional"]:
            N = r["config"]["task"]["params"]["N"]
            bits = 32 * model["width"] * (2 if model["arch"] == "lstm" else 1)
            sides[N].add(bits >= (N - 1) / 2)
    assert any(s == {True, False} for s in sides.values()), dict(sides)


def test_no_mlp_below_the_ffn_bound_reaches_the_threshold(records):
    """The FFN lower bound (first-layer width about N d'/2) seen in the committed runs: no MLP
    narrower than N d'/2 gets within the worst-case threshold, at any N or training-set size, and
    the grid holds some MLP above the bound that does (at N = 4), so the check can tell them apart."""
    below, above = [], []
    for r in records:
        if r["config"]["model"]["arch"] == "mlp" and r["config"]["task"]["name"] == "qsa":
            p = r["config"]["task"]["params"]
            side = below if r["config"]["model"]["width"] < p["N"] * p["d_prime"] / 2 else above
            side.append(r["metrics"]["reached_threshold"])
    assert below and not any(below)
    assert any(above)


def test_the_committed_rates_leave_out_idle_time(records):
    """Runs per hour come from the runs' own CPU and wall time and from the hours in which some
    run was training, never from the calendar span (which holds idle gaps between sweeps)."""
    saved = json.loads((RESULTS / "training-grid.json").read_text())["throughput"]
    _, rates = throughput_table(records)
    for key in ("runs_per_cpu_hour", "runs_per_core_hour_of_run_wall", "runs_per_busy_wall_hour"):
        assert saved[key] == pytest.approx(rates[key]), key
    assert saved["busy_wall_hours"] <= saved["span_hours"] + 1e-9
    wall = sum(r["wall_seconds"] for r in records) / 3600
    assert saved["runs_per_core_hour_of_run_wall"] == pytest.approx(len(records) / wall)
    assert "runs_per_wall_hour" not in saved


def test_the_committed_verdict_is_the_one_the_records_give(records):
    status, _ = verdict(judge(records))
    saved = json.loads((RESULTS / "training-grid.json").read_text())
    assert saved["status"] == str(status)
    assert saved["throughput"]["runs"] == len(records)
    assert saved["throughput"]["runs_per_cpu_hour"] > 0


def test_the_committed_figures_and_parquet_exports_exist(records):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    runs = pd.read_parquet(RESULTS / "training-grid-runs.parquet")
    assert set(runs["run_id"]) == {r["run_id"] for r in records}
    curves = pd.read_parquet(RESULTS / "training-grid-curves.parquet")
    assert set(curves["run_id"]) == {r["run_id"] for r in records}
    for name in (
        "training-samples-vs-n.png",
        "training-width-grid.png",
        "training-attention-pattern.png",
    ):
        assert (RESULTS / name).stat().st_size > 1000, name


def _in(records, sweep):
    return [r for r in records if sweep in r["sweeps"]]
