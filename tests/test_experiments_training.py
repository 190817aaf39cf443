"""Training to convergence (the plateau rule), training curves in the store and in Parquet, the
device option (CPU path), divergence, config validation, and the logging hook."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch

from attnlab.experiments import (
    ModelConfig,
    ResultStore,
    RunConfig,
    SweepConfig,
    TaskConfig,
    TrainConfig,
    TrainingDiverged,
    export_curves_parquet,
    run_sweep,
    train,
)
from attnlab.experiments.config import EXECUTION_FIELDS
from attnlab.experiments.results import CURVE_FIELDS
from attnlab.experiments.schedule import LoopState, update_stopping

from helpers import succeeded_json


def tiny(arch="attention", *, params=None, seed=0, **train_fields) -> RunConfig:
    fields = dict(
        n_train=64,
        n_val=32,
        n_test=64,
        batch_size=16,
        lr=3e-3,
        max_steps=48,
        eval_every=8,
        patience=10,
        checkpoint_every=8,
        threads=1,
        device="cpu",
    )
    fields.update(train_fields)
    return RunConfig(
        task=TaskConfig(name="qsa", params=params or {"N": 6, "q": 2, "d_prime": 3}),
        model=ModelConfig(arch=arch, width=8, readout_hidden=8),
        train=TrainConfig(**fields),
        seed=seed,
    )


# --- the plateau rule ------------------------------------------------------------------------


def _replay(losses, **fields):
    """Feed a validation-loss sequence to the stopping rule; return the state after each pass."""
    t = tiny(schedule="plateau", **fields).train
    state, trace = LoopState(), []
    for k, loss in enumerate(losses, start=1):
        state.step = k * t.eval_every
        update_stopping(state, t, loss)
        trace.append((state.lr_scale, state.stopped_early, state.best_step))
        if state.stopped_early:
            break
    return state, trace


def test_plateau_cuts_the_rate_after_lr_patience_and_stops_after_patience():
    state, trace = _replay([1.0, 0.5] + [0.6] * 10, patience=5, lr_patience=2, lr_decay=0.5)
    scales = [s for s, _, _ in trace]
    # passes 3 and 4 do not improve: the rate halves after the second; 5, 6: again; 7: stop
    assert scales == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    assert (
        state.stopped_early
        and state.bad_evals == 5
        and state.best_step == 2 * 8
        and state.lr_cuts == 2
    )


def test_an_improvement_resets_both_counters():
    state, trace = _replay([1.0, 1.0, 0.9, 1.0, 0.8, 1.0, 1.0], patience=3, lr_patience=2)
    assert not state.stopped_early and state.lr_cuts == 1 and state.best_step == 5 * 8


def test_min_delta_makes_tiny_improvements_count_as_a_plateau():
    losses = [1.0 * 0.999**k for k in range(20)]
    assert _replay(losses, patience=4, lr_patience=2, min_delta=0.01)[0].stopped_early
    assert not _replay(losses, patience=4, lr_patience=2, min_delta=0.0)[0].stopped_early


def test_no_cut_and_no_stop_before_min_steps():
    state, trace = _replay([1.0] * 12, patience=2, lr_patience=1, min_steps=80)
    assert all(
        scale == 1.0 for scale, _, _ in trace[:9]
    )  # passes at steps 8..72 are before step 80
    assert state.stopped_early and state.step == 80


def test_a_trained_run_reports_what_stopped_it_and_its_curve():
    plateau = train(tiny(max_steps=4000, patience=3, lr_patience=1, min_delta=0.05, eval_every=8))
    assert plateau.metrics["stop_reason"] == "plateau" and plateau.metrics["steps"] < 4000
    budget = train(tiny(max_steps=16, patience=50, lr_patience=10))
    assert budget.metrics["stop_reason"] == "budget" and budget.metrics["steps"] == 16
    curve = plateau.curve
    assert set(curve) == set(CURVE_FIELDS)
    assert curve["step"] == list(range(8, plateau.metrics["steps"] + 1, 8))
    best = curve["step"].index(plateau.metrics["best_step"])
    assert curve["val_loss"][best] == pytest.approx(plateau.metrics["best_val_loss"])
    base = plateau.config["train"]["lr"]
    # every rate is the base rate times a power of lr_decay, and cuts match the count reported
    powers = [round(math.log(r / base, 0.5), 9) for r in curve["lr"]]
    assert all(p == int(p) for p in powers) and int(powers[-1]) <= plateau.metrics["lr_cuts"]
    assert all(math.isfinite(x) and x >= 0 for x in curve["train_loss"])


def test_the_plateau_schedule_does_not_depend_on_the_step_budget():
    short, long = (
        train(tiny(max_steps=m, patience=50, lr_patience=2, min_delta=0.5)) for m in (24, 48)
    )
    assert short.curve["lr"] == long.curve["lr"][: len(short.curve["lr"])]


# --- curves in the store -------------------------------------------------------------------


def test_curves_are_stored_with_each_run_and_export_to_parquet(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    results = [train(tiny(seed=s)) for s in (0, 1)]
    with ResultStore(tmp_path / "r.sqlite") as store:
        for result in results:
            assert store.put(result)
        for result in results:
            assert store.curve(result.run_id) == result.curve
        rows = export_curves_parquet(store, tmp_path / "curves.parquet")
    table = pq.read_table(tmp_path / "curves.parquet").to_pylist()
    assert rows == len(table) == sum(len(r.curve["step"]) for r in results)
    assert {row["run_id"] for row in table} == {r.run_id for r in results}
    first = [row for row in table if row["run_id"] == results[0].run_id]
    assert [row["val_loss"] for row in first] == results[0].curve["val_loss"]


def test_to_pandas_gives_one_row_per_finished_run(tmp_path):
    pytest.importorskip("pandas")
    with ResultStore(tmp_path / "r.sqlite") as store:
        store.put(train(tiny()))
        frame = store.to_pandas()
    assert len(frame) == 1 and frame["metrics.stop_reason"].iloc[0] in ("plateau", "budget")


# --- device --------------------------------------------------------------------------------


def test_device_is_an_execution_setting_recorded_with_the_result(tmp_path):
    config = tiny()
    assert set(EXECUTION_FIELDS) == {"device", "threads"}
    assert config.on_device("auto").run_id == config.run_id == config.on_device("cuda").run_id
    assert config.on_device("cuda").train.device == "cuda"
    result = train(config)
    assert result.versions["device"] == "cpu"
    sweep = SweepConfig(
        name="dev",
        base={k: v for k, v in config.model_dump(mode="json").items() if k != "seed"},
        seeds=[0],
    )
    summary = run_sweep(sweep, tmp_path / "r.sqlite", workers=1, device="cpu")
    assert summary.device == "cpu" and summary.completed == 1
    with ResultStore(tmp_path / "r.sqlite") as store:
        (record,) = store.records()
    assert record["device"] == "cpu" and record["run_id"] == config.run_id


def test_the_cli_device_option_computes_on_cpu_and_keeps_the_run_id(tmp_path):
    """`attnlab sweep --device cpu` over a config that asks for 'auto': same run id, the store
    records cpu, and `attnlab train --device cpu` reports it."""
    from typer.testing import CliRunner

    from attnlab.cli import app

    config = tiny(device="auto", max_steps=16)
    sweep = SweepConfig(
        name="dev-cli",
        base={k: v for k, v in config.model_dump(mode="json").items() if k != "seed"},
        seeds=[0],
    )
    (tmp_path / "sweep.json").write_text(sweep.model_dump_json())
    store = tmp_path / "r.sqlite"
    runner = CliRunner()
    result = runner.invoke(
        app,
        ["sweep", str(tmp_path / "sweep.json"), "--device", "cpu", "--workers", "1"]
        + ["--store", str(store), "--json"],
    )
    assert succeeded_json(result)["completed"] == 1
    with ResultStore(store) as results:
        (record,) = results.records()
    assert record["device"] == "cpu" and record["run_id"] == config.run_id
    assert record["config"]["train"]["device"] == "cpu"

    (tmp_path / "run.json").write_text(config.model_dump_json())
    result = runner.invoke(app, ["train", str(tmp_path / "run.json"), "--device", "cpu", "--json"])
    trained = succeeded_json(result)
    assert trained["versions"]["device"] == "cpu" and trained["run_id"] == config.run_id


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="sees no GPU"):
        train(tiny().on_device("cuda"))


# --- divergence and validation --------------------------------------------------------------


def test_a_diverging_run_raises_and_a_sweep_stores_it_as_diverged(tmp_path):
    exploding = dict(lr=1e30, grad_clip=None, schedule="constant")
    with pytest.raises(TrainingDiverged, match="diverged at step"):
        train(tiny(**exploding))
    base = tiny(**exploding).model_dump(mode="json")
    base.pop("seed")
    summary = run_sweep(
        SweepConfig(name="boom", base=base, seeds=[0]), tmp_path / "r.sqlite", workers=1
    )
    assert (summary.completed, summary.failed, summary.diverged) == (0, 1, 1)
    with ResultStore(tmp_path / "r.sqlite") as store:
        assert store.counts() == {"diverged": 1} and store.records() == []


@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", math.inf),
        ("lr", math.nan),
        ("weight_decay", math.inf),
        ("grad_clip", math.inf),
        ("min_delta", math.nan),
        ("lr_decay", 1.0),
    ],
)
def test_non_finite_or_out_of_range_numbers_are_rejected(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_a_sweep_without_seeds_is_an_error():
    with pytest.raises(ValueError, match="seeds is empty"):
        SweepConfig(name="x", base={}, seeds=[])


# --- logging hook --------------------------------------------------------------------------


def test_the_logger_sees_every_validation_pass():
    seen = []
    result = train(tiny(), logger=lambda step, values: seen.append((step, values)))
    assert [s for s, _ in seen] == result.curve["step"]
    assert [v["val_loss"] for _, v in seen] == result.curve["val_loss"]
    assert set(seen[0][1]) == {"train_loss", "val_loss", "lr"}


def test_logger_specs():
    from attnlab.experiments.loggers import LoggerUnavailable, make_logger

    with pytest.raises(LoggerUnavailable, match="unknown logger"):
        make_logger("wandb")
    with pytest.raises(LoggerUnavailable, match="log folder"):
        make_logger("tensorboard")
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(LoggerUnavailable, match="pip install tensorboard"):
            make_logger("tensorboard:/tmp/never-written")


# --- layering ------------------------------------------------------------------------------


def test_the_store_loads_without_torch_or_the_training_code():
    code = textwrap.dedent("""
        import sys, types, pathlib
        import attnlab

        class NoTorch:  # any import of torch now fails
            def find_spec(self, name, path=None, target=None):
                if name == "torch" or name.startswith("torch."):
                    raise ImportError("torch is blocked in this test")

        sys.meta_path.insert(0, NoTorch())
        package = types.ModuleType("attnlab.experiments")  # skip the package __init__ (it re-exports train)
        package.__path__ = [str(pathlib.Path(attnlab.__file__).parent / "experiments")]
        sys.modules["attnlab.experiments"] = package
        import attnlab.experiments.store, attnlab.experiments.thresholds
        assert "attnlab.experiments.train" not in sys.modules and "torch" not in sys.modules
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_trained_attention_is_built_from_the_attention_unit_layer():
    from attnlab.experiments.models import build_model
    from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer

    model = build_model(ModelConfig(arch="attention", width=8, heads=3), 6, 15, 3)
    assert isinstance(model.attend.layer, MultiHeadAttentionLayer)
    assert len(model.attend.layer.heads) == 3 and all(
        isinstance(h, AttentionUnit) for h in model.attend.layer.heads
    )
    tokens = torch.randn(2, 6, 15)
    weights = model.attention_weights(tokens)
    assert weights.shape == (2, 3, 6, 6)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3, 6))
