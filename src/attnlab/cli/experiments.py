"""`attnlab train`, `attnlab sweep` and `attnlab results show|export|plot`."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer
from rich import box
from rich.table import Table

from attnlab.cli.apps import app
from attnlab.cli.output import console, emit, err_console, format_value, guarded

DEFAULT_STORE = Path("attnlab-results.sqlite")

results_app = typer.Typer(help="Inspect, export and plot a results store.", no_args_is_help=True)
app.add_typer(results_app, name="results")


class EngineChoice(str, Enum):
    local = "local"
    dask = "dask"


class DeviceChoice(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


_STORE_OPTION = typer.Option(DEFAULT_STORE, "--store", help="SQLite results file.")
_JSON_OPTION = typer.Option(
    False, "--json", help="One JSON object on the last line instead of tables."
)
_DEVICE_OPTION = typer.Option(
    None,
    "--device",
    help="Compute every run here (default: the config's train.device); run ids do not change.",
)


def _progress_default() -> bool:
    return sys.stderr.isatty()


def _not_a_file(path: Path | None, what: str) -> None:
    if path is not None and path.exists() and not path.is_dir():
        raise ValueError(f"{what} {path} is an existing file, not a folder; give a folder path")


def _existing_store(store: Path) -> Path:
    if not store.exists():
        raise ValueError(
            f"no results store at {store}; run `attnlab sweep ... --store {store}` first"
        )
    return store


@app.command()
def train(
    config: str = typer.Argument(
        ..., help="A run config JSON file, or a built-in name (e.g. run-qsa-attention)."
    ),
    run_dir: Path = typer.Option(
        None, "--run-dir", help="Checkpoint here and resume from it if it has a checkpoint."
    ),
    device: DeviceChoice = _DEVICE_OPTION,
    log: str = typer.Option(
        None,
        "--log",
        help="Also log the curve: tensorboard:DIR or mlflow[:EXPERIMENT] "
        "(needs that package installed).",
    ),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: when a TTY)."
    ),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Train one model on one task from a config file; print its test metrics."""

    def go():
        from contextlib import nullcontext

        from attnlab.experiments.config import load_run_config
        from attnlab.experiments.train import train as train_run

        _not_a_file(run_dir, "--run-dir")
        run = load_run_config(config)
        if device is not None:
            run = run.on_device(device.value)
        if log:
            from attnlab.experiments.loggers import make_logger

            logger_cm = make_logger(log)
        else:
            logger_cm = nullcontext()
        with logger_cm as logger:
            result = train_run(
                run,
                run_dir,
                progress=_progress_default() if progress is None else progress,
                logger=logger,
            )
        if json_out:
            emit(result.to_dict(), True)
        else:
            emit(
                {
                    "run_id": result.run_id,
                    "status": result.status,
                    "device": result.versions.get("device"),
                    **result.metrics,
                    **result.timings,
                },
                False,
                title=f"{run.model.arch} on {run.task.name} (seed {run.seed})",
            )

    guarded(go)


@app.command()
def sweep(
    sweep_file: str = typer.Argument(
        ...,
        metavar="SWEEP",
        help="A sweep JSON file, or a built-in name (qsa-quick, qsa-samples, ...).",
    ),
    engine: EngineChoice = typer.Option(
        EngineChoice.local, "--engine", help="local processes, or dask."
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", help="Dask scheduler address (default: start a LocalCluster)."
    ),
    workers: int = typer.Option(
        None, "--workers", min=1, help="Parallel runs (default: number of cores)."
    ),
    device: DeviceChoice = _DEVICE_OPTION,
    store: Path = _STORE_OPTION,
    runs_dir: Path = typer.Option(
        None, "--runs-dir", help="Per-run checkpoint dirs (default: STORE with .runs suffix)."
    ),
    progress: bool = typer.Option(
        None, "--progress/--no-progress", help="Progress bar on stderr (default: when a TTY)."
    ),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Run every not-yet-finished run of a sweep, writing results into the store. Exits 1 when
    any run failed or diverged (they are stored as such, and retried by the next invocation)."""

    def go():
        from attnlab.experiments.config import load_sweep
        from attnlab.experiments.store import ResultStore
        from attnlab.experiments.sweep import run_sweep

        _not_a_file(runs_dir, "--runs-dir")
        spec = load_sweep(sweep_file)  # a bad config fails before the store is created
        ResultStore(store).close()  # and a bad --store before any training
        return run_sweep(
            spec,
            store,
            engine=engine.value,
            workers=workers,
            scheduler=scheduler,
            runs_dir=runs_dir or store.with_suffix(".runs"),
            progress=_progress_default() if progress is None else progress,
            device=device.value if device is not None else None,
        )

    summary = guarded(go)
    data = summary.to_dict()
    if json_out:
        emit(data, True)
    else:
        failures = data.pop("failures")
        emit(data, False, title=f"sweep {summary.sweep}")
        for failure in failures:
            console.print(f"[red]failed[/] {failure['run_id']}: {failure['error']}")
    if summary.failed:
        err_console.print(
            f"[bold red]error:[/] {summary.failed} of {summary.total} runs failed "
            f"({summary.diverged} diverged); they are stored with their errors "
            f"(`attnlab results show --store {store}`) and rerun next time"
        )
        raise typer.Exit(code=1)


def _records(store: Path, sweep_name: str | None):
    from attnlab.experiments.store import ResultStore

    with ResultStore(_existing_store(store)) as results:
        return results.records(sweep_name), results.counts()


def short_task(label: str) -> str:
    """'qsa(N=16,d_prime=4,q=1)' -> 'qsa N=16 q=1' (d_prime is the same everywhere)."""
    name, _, params = label.partition("(")
    kept = [p for p in params.rstrip(")").split(",") if p and not p.startswith("d_prime=")]
    return " ".join([name, *kept])


def _table(title: str, header: list[str], rows: list[list[str]]) -> None:
    if not rows:
        return
    table = Table(
        title=title, header_style="bold", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1)
    )
    for name in header:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*row)
    console.print(table)


@results_app.command("show")
def show(
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Per task, model and training-set size: errors (median over seeds, best lr by validation);
    samples and width needed to reach the threshold, with 95% intervals over seeds."""

    def _cell(value) -> str:
        """An error for the table: 'n/a' where the run recorded none (never 'None' or 'nan')."""
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return format_value(value)

    def go():
        from attnlab.experiments.analysis import summarise
        from attnlab.experiments.thresholds import sample_needs, width_needs

        records, counts = _records(store, sweep_name)
        rows = summarise(records)
        needs, widths = sample_needs(records), width_needs(records)
        if json_out:
            emit(
                {
                    "statuses": counts,
                    "summary": rows,
                    "samples_needed": needs,
                    "width_needed": widths,
                },
                True,
            )
            return
        console.print("runs by status: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        _table(
            "test error (median over seeds)",
            ["task", "model", "n", "seeds", "max err", "mean err", "within"],
            [
                [
                    short_task(r["task"]),
                    r["model"],
                    str(r["n_train"]),
                    str(r["seeds"]),
                    _cell(r["max_error"]),
                    _cell(r.get("mean_error", r.get("bit_error_rate"))),
                    # seeds within the threshold as a count: a share would round 199/200 to 100%
                    f"{round(r['reached_fraction'] * r['seeds'])}/{r['seeds']}",
                ]
                for r in rows
            ],
        )
        _table(
            "samples to reach the threshold [95% interval]",
            ["task", "model", "worst case", "mean error"],
            [
                [short_task(n["task"]), n["model"], n["max"]["text"], n["mean"]["text"]]
                for n in needs
                if len(n["sizes_tried"]) > 1
            ],
        )
        _table(
            "smallest width reaching the threshold",
            ["task", "heads", "width", "tried"],
            [
                [
                    short_task(w["task"]),
                    str(w["heads"]),
                    w["text"],
                    ",".join(map(str, w["widths_tried"])),
                ]
                for w in widths
                if len(w["widths_tried"]) > 1
            ],
        )

    guarded(go)


@results_app.command("export")
def export(
    path: Path = typer.Argument(..., help="Output file; .csv or .parquet."),
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    curves: bool = typer.Option(
        False,
        "--curves",
        help="Export the training curves (one row per validation "
        "pass) instead of one row per run; Parquet only.",
    ),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Write one row per finished run (config, metrics, timings, versions) as CSV or Parquet."""

    def go():
        from attnlab.experiments.store import (
            ResultStore,
            export_csv,
            export_curves_parquet,
            export_parquet,
        )

        writers = {".csv": export_csv, ".parquet": export_parquet}
        if path.suffix not in writers:
            raise ValueError(f"cannot tell the format of '{path}'; name it *.csv or *.parquet")
        if curves and path.suffix != ".parquet":
            raise ValueError("--curves writes Parquet; name the file *.parquet")
        if not path.parent.is_dir():
            raise ValueError(
                f"folder {path.parent} does not exist; create it first or write elsewhere"
            )
        if path.is_dir():
            raise ValueError(f"{path} is a folder; give a file name ending in {path.suffix}")
        with ResultStore(_existing_store(store)) as results:
            writer = export_curves_parquet if curves else writers[path.suffix]
            rows = writer(results, path, sweep_name)
        emit({"path": str(path), "rows": rows}, json_out, title="export")

    guarded(go)


@results_app.command("plot")
def plot(
    out: Path = typer.Option(Path("plots"), "--out", help="Directory for the PNG files."),
    store: Path = _STORE_OPTION,
    sweep_name: str = typer.Option(None, "--sweep", help="Only this sweep's runs."),
    json_out: bool = _JSON_OPTION,
) -> None:
    """Error vs training-set size per architecture; samples needed vs N and width vs q and N
    (when the store holds those sweeps)."""

    def _cell(value) -> str:
        """An error for the table: 'n/a' where the run recorded none (never 'None' or 'nan')."""
        if value is None or (isinstance(value, float) and value != value):
            return "n/a"
        return format_value(value)

    def go():
        from attnlab.experiments.analysis import summarise
        from attnlab.experiments.plots import (
            plot_error_vs_samples,
            plot_samples_vs_n,
            plot_width_needs,
        )
        from attnlab.experiments.thresholds import sample_needs, width_needs

        _not_a_file(out, "--out")
        records, _ = _records(store, sweep_name)
        written = {
            "error_vs_samples": str(
                plot_error_vs_samples(summarise(records), out / "error_vs_samples.png")
            )
        }
        needs = [n for n in sample_needs(records) if len(n["sizes_tried"]) > 1]
        if any("q" in n["task_params"] for n in needs):
            written["samples_vs_n"] = str(plot_samples_vs_n(needs, out / "samples_vs_n.png"))
        widths = [w for w in width_needs(records) if len(w["widths_tried"]) > 1]
        if any("q" in w for w in widths):
            written["width_needed"] = str(plot_width_needs(widths, out / "width_needed.png"))
        emit(written, json_out, title="figures")

    guarded(go)
