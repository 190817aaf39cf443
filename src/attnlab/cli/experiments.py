"""`attnlab train`, `attnlab sweep` and `attnlab results show|export|plot`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from attnlab.cli.apps import app
from attnlab.cli.output import console, emit, guarded

DEFAULT_STORE = Path("attnlab-results.sqlite")

results_app = typer.Typer(help="Inspect, export and plot a results store.", no_args_is_help=True)
app.add_typer(results_app, name="results")


class EngineChoice(str, Enum):
    local = "local"
    dask = "dask"


_STORE_OPTION = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file.")
_JSON_OPTION = typer.Option(False, "--json", help="One JSON object on the last line instead of tables.")


def _progress_default() -> bool:
    return sys.stderr.isatty()


@app.command()
def train(
    config: str = typer.Argument(..., help="A run config JSON file, or a built-in name (e.g. run-qsa-attention)."),
    run_dir: Path = typer.Option(None, "--run-dir", help="Checkpoint here and resume from it if it has a checkpoint."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when a TTY)."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Train one model on one task from a config file; print its test metrics."""

    def go():
        from attnlab.experiments.config import load_run_config
        from attnlab.experiments.train import train as train_run

        run = load_run_config(config)
        result = train_run(run, run_dir, progress=_progress_default() if progress is None else progress)
        if json_out:
            emit(result.to_dict(), True)
        else:
            emit({"run_id": result.run_id, "status": result.status, **result.metrics, **result.timings}, False,
                 title=f"{run.model.arch} on {run.task.name} (seed {run.seed})")

    guarded(go)


@app.command()
def sweep(
    sweep_file: str = typer.Argument(..., metavar="SWEEP", help="A sweep JSON file, or a built-in name (qsa-quick, qsa-default, ...)."),
    engine: EngineChoice = typer.Option(EngineChoice.local, "--engine", help="local processes, or dask."),
    scheduler: str = typer.Option(None, "--scheduler", help="Dask scheduler address (default: start a LocalCluster)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Parallel runs (default: number of cores)."),
    store: Path = _STORE_OPTION,
    runs_dir: Path = typer.Option(None, "--runs-dir", help="Per-run checkpoint dirs (default: STORE with .runs suffix)."),
    progress: bool = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when a TTY)."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Run every not-yet-finished run of a sweep, writing results into the store."""

    def go():
        from attnlab.experiments.sweep import run_sweep

        summary = run_sweep(sweep_file, store, engine=engine.value, workers=workers, scheduler=scheduler,
                            runs_dir=runs_dir or store.with_suffix(".runs"),
                            progress=_progress_default() if progress is None else progress)
        data = summary.to_dict()
        if json_out:
            emit(data, True)
        else:
            failures = data.pop("failures")
            emit(data, False, title=f"sweep {summary.sweep}")
            for failure in failures:
                console.print(f"[red]failed[/] {failure['run_id']}: {failure['error']}")

    guarded(go)


def _summary_rows(store: Path, sweep_name: str | None):
    from attnlab.experiments.analysis import summarise
    from attnlab.experiments.store import ResultStore

    if not store.exists():
        raise ValueError(f"no results store at {store}; run `attnlab sweep ... --store {store}` first")
    with ResultStore(store) as results:
        return summarise(results.records(sweep_name))


@results_app.command("show")
def show(
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Best-of-LR summaries per task, model and training-set size; samples and width to threshold."""

    def go():
        from attnlab.experiments.analysis import samples_to_threshold, width_to_threshold

        rows = _summary_rows(store, sweep_name)
        needs, widths = samples_to_threshold(rows), width_to_threshold(rows)
        if json_out:
            emit({"summary": rows, "samples_to_threshold": needs, "width_to_threshold": widths}, True)
            return
        _print_table("runs (median over seeds, best lr by validation)", rows,
                     ["task", "model", "n_train", "seeds", "max_error", "mean_error", "bit_error_rate",
                      "threshold", "reached_fraction"])
        _print_table("training examples needed to reach the threshold", needs,
                     ["task", "model", "samples_needed", "largest_tried", "ratio_to_attention"])
        _print_table("smallest attention width reaching the threshold", widths,
                     ["task", "heads", "width_needed", "widths_tried"])

    guarded(go)


def _print_table(title: str, rows: list[dict], columns: list[str]) -> None:
    from attnlab.cli.output import _fmt

    columns = [c for c in columns if any(c in r for r in rows)]
    if not rows:
        return
    table = Table(title=title, header_style="bold")
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*(_fmt(row.get(c, "")) for c in columns))
    console.print(table)


@results_app.command("export")
def export(
    path: Path = typer.Argument(..., help="Output file; .csv or .parquet."),
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Write one row per finished run (config, metrics, timings, versions) as CSV or Parquet."""

    def go():
        from attnlab.experiments.store import ResultStore, export_csv, export_parquet

        writers = {".csv": export_csv, ".parquet": export_parquet}
        if path.suffix not in writers:
            raise ValueError(f"cannot tell the format of '{path}'; name it *.csv or *.parquet")
        if not store.exists():
            raise ValueError(f"no results store at {store}; run `attnlab sweep ... --store {store}` first")
        with ResultStore(store) as results:
            rows = writers[path.suffix](results, path, sweep_name)
        emit({"path": str(path), "rows": rows}, json_out, title="export")

    guarded(go)


@results_app.command("plot")
def plot(
    out: Path = typer.Option(Path("plots"), "--out", help="Directory for the PNG files."),
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Error vs training-set size per architecture, and threshold width vs q (when measured)."""

    def go():
        from attnlab.experiments.analysis import width_to_threshold
        from attnlab.experiments.plots import plot_error_vs_samples, plot_threshold_width

        rows = _summary_rows(store, sweep_name)
        written = {"error_vs_samples": str(plot_error_vs_samples(rows, out / "error_vs_samples.png"))}
        widths = [w for w in width_to_threshold(rows) if len(w["widths_tried"]) > 1]
        if widths:
            written["threshold_width"] = str(plot_threshold_width(widths, out / "threshold_width.png"))
        emit(written, json_out, title="figures")

    guarded(go)
