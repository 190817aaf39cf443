"""Configs, trainable baselines, the training loop (determinism, resume, early stopping), the
results store and the analysis. Sweeps, Dask, kill -9 and the CLI are in test_experiments_sweep.py."""

from __future__ import annotations

import itertools
import json
import sqlite3

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from attnlab.experiments import (
    ModelConfig,
    ResultStore,
    RunConfig,
    SweepConfig,
    TaskConfig,
    TrainConfig,
    builtin_configs,
    export_csv,
    export_parquet,
    load_run_config,
    load_sweep,
    train,
)
from attnlab.experiments.analysis import samples_to_threshold, summarise, width_to_threshold
from attnlab.experiments.config import ConfigNotFoundError
from attnlab.experiments.models import build_model
from attnlab.experiments.plots import plot_error_vs_samples, plot_threshold_width
from attnlab.experiments.train import learning_rate
from attnlab.tasks import get_task


def tiny(arch="attention", *, task="qsa", params=None, seed=0, **train_fields) -> RunConfig:
    train_defaults = dict(
        n_train=64,
        n_val=32,
        n_test=64,
        batch_size=16,
        lr=3e-3,
        max_steps=24,
        eval_every=8,
        patience=10,
        checkpoint_every=8,
        threads=1,
    )
    train_defaults.update(train_fields)
    return RunConfig(
        task=TaskConfig(name=task, params=params or {"N": 6, "q": 2, "d_prime": 3}),
        model=ModelConfig(arch=arch, width=8, readout_hidden=8),
        train=TrainConfig(**train_defaults),
        seed=seed,
    )


# --- configs ---------------------------------------------------------------------------------


def test_run_id_is_a_function_of_config_and_seed():
    a, b = tiny(seed=0), tiny(seed=1)
    assert a.run_id == tiny(seed=0).run_id
    assert a.run_id != b.run_id
    assert a.run_id != tiny(lr=1e-3).run_id
    assert RunConfig.model_validate_json(a.canonical_json()) == a


def test_unknown_config_fields_are_rejected():
    with pytest.raises(ValueError, match="extra"):
        RunConfig.model_validate(
            {"task": {"name": "qsa"}, "model": {"arch": "attention", "widht": 3}}
        )
    with pytest.raises(ValueError):
        ModelConfig(arch="transformer-xl")


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.dictionaries(
            st.sampled_from(["train.lr", "train.n_train", "model.width"]),
            st.lists(st.integers(1, 50), min_size=1, max_size=3, unique=True),
            max_size=3,
        ),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True),
)
def test_sweep_expands_to_the_union_of_grid_products(grids, seeds):
    base = tiny()
    sweep = SweepConfig(name="t", base=json.loads(base.canonical_json()), grids=grids, seeds=seeds)
    defaults = {
        "train.lr": base.train.lr,
        "train.n_train": base.train.n_train,
        "model.width": base.model.width,
    }
    expected = set()
    for grid in grids:
        keys = list(grid)
        for values in itertools.product(*(grid[k] for k in keys)):
            point = {**defaults, **dict(zip(keys, values))}
            expected |= {
                (float(point["train.lr"]), point["train.n_train"], point["model.width"], s)
                for s in seeds
            }
    runs = sweep.expand()
    assert {(r.train.lr, r.train.n_train, r.model.width, r.seed) for r in runs} == expected
    assert len(runs) == len(expected) == len({r.run_id for r in runs})


def test_sweep_errors_name_the_bad_axis():
    base = json.loads(tiny().canonical_json())
    with pytest.raises(ValueError, match="no values"):
        SweepConfig(name="t", base=base, grids=[{"train.lr": []}])
    with pytest.raises(ValueError, match="not a section"):
        SweepConfig(name="t", base=base, grids=[{"seed.x": [1]}]).expand()
    with pytest.raises(ValueError, match="grid point"):
        SweepConfig(name="t", base=base, grids=[{"train.lr": [-1.0]}]).expand()
    with pytest.raises(ConfigNotFoundError, match="built-ins"):
        load_sweep("no-such-sweep")


def test_every_committed_config_validates_and_builds_its_tasks():
    names = builtin_configs()
    assert {"qsa-quick", "qsa-default", "qsa-full"} <= set(names)
    for name in names:
        if name.startswith("run-"):
            configs = [load_run_config(name)]
        else:
            configs = load_sweep(name).expand()
            assert configs, name
        for config in configs:
            task = get_task(config.task.name, **config.task.params)
            assert task.token_dim >= 1


# --- models ----------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["attention", "third_order", "lstm", "gru", "mlp"])
def test_every_baseline_maps_tokens_to_per_position_outputs(arch):
    config = ModelConfig(arch=arch, width=8, heads=2, bidirectional=True, readout_hidden=8)
    model = build_model(config, seq_len=5, token_dim=7, out_dim=3).double()
    out = model(torch.randn(4, 5, 7, dtype=torch.float64))
    assert out.shape == (4, 5, 3)


def test_attention_baseline_is_permutation_equivariant_and_the_lstm_is_not():
    torch.manual_seed(0)
    tokens = torch.randn(2, 6, 5, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    for arch, equivariant in [("attention", True), ("third_order", True), ("lstm", False)]:
        model = build_model(ModelConfig(arch=arch, width=8, heads=2), 6, 5, 2).double()
        moved = model(tokens[:, perm])
        assert torch.allclose(moved, model(tokens)[:, perm], atol=1e-12) is equivariant


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_unidirectional_rnn_outputs_see_every_token(arch):
    # the second reading pass lets the first position's output depend on the last token
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, width=8), 5, 3, 2).double()
    tokens = torch.randn(2, 5, 3, dtype=torch.float64)
    moved = tokens.clone()
    moved[:, -1] += 1.0
    assert not torch.allclose(model(tokens)[:, 0], model(moved)[:, 0])


def test_flat_mlp_refuses_another_sequence_length():
    model = build_model(ModelConfig(arch="mlp", width=8), seq_len=5, token_dim=3, out_dim=1)
    with pytest.raises(ValueError, match="length 5"):
        model(torch.randn(2, 6, 3))


# --- training --------------------------------------------------------------------------------


def test_training_is_deterministic_and_reports_consistent_metrics():
    config = tiny()
    first, second = train(config), train(config)
    assert first.metrics == second.metrics
    m = first.metrics
    assert first.status == "ok" and first.run_id == config.run_id
    assert m["steps"] == config.train.max_steps
    assert m["threshold"] == pytest.approx(1 / (2 * 2))
    assert m["reached_threshold"] == (m["max_error"] <= m["threshold"])
    assert 0 <= m["mean_error"] <= m["max_error"]
    json.dumps(first.to_dict())  # results serialise


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    config = tiny(max_steps=40, checkpoint_every=7)
    straight = train(config, tmp_path / "straight")
    partial = train(config, tmp_path / "resumed", step_budget=17)
    assert partial.status == "partial" and partial.metrics["steps"] == 17
    assert sorted(p.name for p in (tmp_path / "resumed").glob("ckpt-*")) == [
        "ckpt-000000017.json",
        "ckpt-000000017.safetensors",
    ]
    resumed = train(config, tmp_path / "resumed")
    assert resumed.metrics == straight.metrics
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # a finished run dir answers from result.json without training again
    assert train(config, tmp_path / "resumed").to_dict() == resumed.to_dict()


def test_a_run_dir_belongs_to_one_config(tmp_path):
    train(tiny(max_steps=8), tmp_path, step_budget=4)
    with pytest.raises(ValueError, match="own run directory"):
        train(tiny(max_steps=8, seed=3), tmp_path)


def test_early_stopping_stops_after_patience_without_improvement():
    # min_delta 0.5 asks every validation pass to halve the best loss; a tiny lr cannot
    config = tiny(lr=1e-9, max_steps=400, eval_every=5, patience=2, min_delta=0.5)
    m = train(config).metrics
    assert m["stopped_early"] is True
    assert m["steps"] == 5 * (1 + 2)
    assert m["best_step"] == 5


@pytest.mark.parametrize("arch,task", [("attention", "match2"), ("third_order", "match3")])
def test_binary_tasks_train_on_logits_and_score_bits(arch, task):
    config = tiny(arch, task=task, params={"N": 6, "M": 11})
    m = train(config).metrics
    assert 0 <= m["bit_error_rate"] <= 1
    assert m["bit_errors"] == pytest.approx(m["bit_error_rate"] * config.train.n_test * 6)
    assert m["threshold"] == 0.5


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 20), st.integers(1, 200), st.floats(1e-5, 1.0))
def test_learning_rate_warms_up_then_decays_to_zero(warmup, max_steps, lr):
    config = tiny(lr=lr, max_steps=max_steps, warmup_steps=warmup, schedule="cosine")
    rates = [learning_rate(config, s) for s in range(max_steps + warmup + 1)]
    assert all(0 <= r <= lr * (1 + 1e-12) for r in rates)
    after = rates[warmup:]
    assert all(a >= b - 1e-15 for a, b in zip(after, after[1:]))
    if warmup < max_steps:
        assert rates[warmup] == pytest.approx(lr)
        assert rates[max_steps] == pytest.approx(0.0, abs=1e-12)


# --- store -----------------------------------------------------------------------------------


def test_store_is_idempotent_and_keeps_finished_runs(tmp_path):
    path = tmp_path / "r.sqlite"
    result = train(tiny(max_steps=8))
    with ResultStore(path) as store:
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert store.put_failure(result.run_id, result.config, result.seed, "boom")
        assert store.finished_ids() == set()
        assert store.put(result) is True  # replaces the failure
        assert store.put(result) is False  # a finished run is never duplicated
        assert store.put_failure(result.run_id, result.config, result.seed, "late") is False
        assert store.finished_ids() == {result.run_id}
    with sqlite3.connect(path) as raw:
        rows = raw.execute(
            "SELECT run_id, status, seed, metrics_json, torch_version FROM runs"
        ).fetchall()
    assert rows == [(result.run_id, "ok", 0, json.dumps(result.metrics), torch.__version__)]


def test_store_refuses_unfinished_runs(tmp_path):
    partial = train(tiny(max_steps=8), tmp_path / "run", step_budget=2)
    with ResultStore(tmp_path / "r.sqlite") as store, pytest.raises(ValueError, match="partial"):
        store.put(partial)


def test_exports_have_one_row_per_finished_run(tmp_path):
    import pyarrow.parquet as pq

    results = [train(tiny(seed=s, max_steps=8)) for s in range(3)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        for r in results:
            store.put(r)
        store.put_failure("deadbeef", results[0].config, 9, "boom")
        store.add_to_sweep("only-two", [results[0].run_id, results[1].run_id])
        assert export_csv(store, tmp_path / "all.csv") == 3
        assert export_parquet(store, tmp_path / "two.parquet", sweep="only-two") == 2
    lines = (tmp_path / "all.csv").read_text().splitlines()
    assert len(lines) == 4 and "config.model.arch" in lines[0] and "metrics.max_error" in lines[0]
    table = pq.read_table(tmp_path / "two.parquet")
    assert table.num_rows == 2
    assert sorted(table.column("run_id").to_pylist()) == sorted(r.run_id for r in results[:2])
    by_id = {r.run_id: r.metrics["max_error"] for r in results}
    exported = dict(
        zip(table.column("run_id").to_pylist(), table.column("metrics.max_error").to_pylist())
    )
    assert exported == {k: by_id[k] for k in exported}


# --- analysis and plots ----------------------------------------------------------------------


def _record(arch, n_train, lr, seed, val, max_error, width=8, q=2):
    config = tiny(arch, params={"N": 6, "q": q, "d_prime": 3}, n_train=n_train, lr=lr, seed=seed)
    config = config.model_copy(update={"model": config.model.model_copy(update={"width": width})})
    metrics = {
        "best_val_loss": val,
        "max_error": max_error,
        "mean_error": max_error / 2,
        "threshold": 1 / (2 * q),
        "reached_threshold": max_error <= 1 / (2 * q),
    }
    return {"config": config.model_dump(mode="json"), "seed": seed, "metrics": metrics}


def test_summary_picks_the_lr_by_validation_loss_and_takes_medians_over_seeds():
    records = [
        # per seed, the lr with the lower validation loss wins even with a worse test error
        _record("attention", 100, 1e-3, 0, val=0.1, max_error=0.30),
        _record("attention", 100, 3e-3, 0, val=0.2, max_error=0.01),
        _record("attention", 100, 1e-3, 1, val=0.3, max_error=0.50),
        _record("attention", 100, 3e-3, 1, val=0.1, max_error=0.10),
        _record("attention", 100, 1e-3, 2, val=0.1, max_error=0.20),
        _record("lstm", 100, 1e-3, 0, val=0.1, max_error=0.90),
        _record("lstm", 1000, 1e-3, 0, val=0.1, max_error=0.20),
    ]
    rows = summarise(records)
    attention = next(r for r in rows if r["arch"] == "attention")
    assert attention["seeds"] == 3 and attention["chosen_lr"] == [1e-3, 3e-3, 1e-3]
    assert attention["max_error"] == pytest.approx(0.20)  # median of 0.30, 0.10, 0.20
    assert attention["reached_fraction"] == pytest.approx(2 / 3)
    needs = {e["arch"]: e for e in samples_to_threshold(rows)}
    assert needs["attention"]["samples_needed"] == 100
    assert needs["lstm"]["samples_needed"] == 1000 and needs["lstm"]["ratio_to_attention"] == "10"


def test_width_to_threshold_and_plots(tmp_path):
    records = [
        _record("attention", 500, 1e-3, 0, 0.1, err, width=w, q=q)
        for q, errors in [(1, {4: 0.9, 8: 0.2, 16: 0.1}), (2, {4: 0.9, 8: 0.5, 16: 0.2})]
        for w, err in errors.items()
    ]
    rows = summarise(records)
    widths = {e["q"]: e["width_needed"] for e in width_to_threshold(rows)}
    assert widths == {1: 8, 2: 16}
    for png in (
        plot_error_vs_samples(rows, tmp_path / "a.png"),
        plot_threshold_width(width_to_threshold(rows), tmp_path / "b.png"),
    ):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="no finished runs"):
        plot_error_vs_samples([], tmp_path / "c.png")


def test_store_written_by_an_older_schema_gains_the_missing_columns(tmp_path):
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE runs (run_id TEXT PRIMARY KEY, status TEXT NOT NULL, config_json TEXT NOT NULL, "
            "seed INTEGER NOT NULL, metrics_json TEXT NOT NULL, timings_json TEXT NOT NULL)"
        )
    result = train(tiny(max_steps=8))
    with ResultStore(path) as store:
        assert store.put(result)
        [row] = store.records()
    assert row["device"] == "cpu" and row["metrics"] == result.metrics


def test_result_store_refuses_a_directory_and_names_a_file_to_use(tmp_path):
    from attnlab.experiments.store import ResultStore, StoreError

    with pytest.raises(
        StoreError, match=r"is a directory; pass a file path such as .*results\.sqlite"
    ):
        ResultStore(tmp_path)
    store = ResultStore(tmp_path / "new" / "folder" / "r.sqlite")  # missing folders are created
    assert store.path.parent.is_dir()
