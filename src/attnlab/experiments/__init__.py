"""Training experiments: configs, trainable baselines, the training loop, sweeps and results.

    from attnlab.experiments import default_sweep, run_sweep
    summary = run_sweep(default_sweep(quick=True), "results.sqlite", engine="local", workers=2)

Configs are pydantic models (`RunConfig`, `SweepConfig`) stored as JSON in
attnlab/experiments/configs; results go to a SQLite `ResultStore`. Layering: config and results
(plain data) <- store <- analysis, plots; train <- sweep. The store never imports the training code.
"""

from attnlab.experiments.config import (
    ModelConfig,
    RunConfig,
    SweepConfig,
    TaskConfig,
    TrainConfig,
    builtin_configs,
    load_run_config,
    load_sweep,
)
from attnlab.experiments.results import RunResult
from attnlab.experiments.store import ResultStore, export_csv, export_curves_parquet, export_parquet
from attnlab.experiments.sweep import SweepSummary, default_sweep, make_executor, run_sweep
from attnlab.experiments.train import TrainingDiverged, train

__all__ = [
    "ModelConfig",
    "ResultStore",
    "RunConfig",
    "RunResult",
    "SweepConfig",
    "SweepSummary",
    "TaskConfig",
    "TrainConfig",
    "TrainingDiverged",
    "builtin_configs",
    "default_sweep",
    "export_csv",
    "export_curves_parquet",
    "export_parquet",
    "load_run_config",
    "load_sweep",
    "make_executor",
    "run_sweep",
    "train",
]
