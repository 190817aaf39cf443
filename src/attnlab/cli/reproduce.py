"""`attnlab reproduce`: the main job. Measures every built claim and writes an HTML report."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import typer

from attnlab.cli.apps import app
from attnlab.cli.output import console, err_console, guarded


@app.command()
def reproduce(
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Small sizes, smoke checks only: about 45 s on 2 idle CPU cores.",
    ),
    out: Path = typer.Option(
        Path("reports/latest"), "--out", help="Folder for report.html, report.json and figures."
    ),
    only: list[str] = typer.Option([], "--only", help="Check only these claims (repeatable)."),
    skip: list[str] = typer.Option([], "--skip", help="Skip these claims (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Base seed for every random choice."),
    workers: int = typer.Option(
        max(1, os.cpu_count() or 1),
        "--workers",
        show_default="CPU count",
        help="Processes for the training sweep.",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Recompute every claim, ignoring (and replacing) the results cached in OUT/.cache.",
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Exit 1 unless every checked claim reproduces."
    ),
    list_claims: bool = typer.Option(False, "--list", help="List the claims and exit."),
    json_out: bool = typer.Option(
        False, "--json", help="No progress; one JSON summary object on the last line."
    ),
) -> None:
    """Reproduce the papers' claims at default (or --quick) size and write a self-contained report.

    The default run takes about 4 minutes on 2 CPU cores, --quick about 45 s. Each finished claim is cached in OUT/.cache (keyed by claim, settings and code version) and
    the report is rewritten after every claim: an interrupted run leaves a partial report, and
    running the same command again resumes without redoing finished claims."""
    from attnlab.report import CLAIMS, select

    keys = guarded(lambda: select(only or None, skip))
    if list_claims:
        for key in keys:
            c = CLAIMS[key]
            console.print(f"[bold]{key}[/]  ({c.part})  {c.title}")
        return
    command = (
        " ".join(["attnlab reproduce"] + sys.argv[2:]) if len(sys.argv) > 1 else "attnlab reproduce"
    )
    options = dict(
        quick=quick,
        only=only or None,
        skip=skip,
        seed=seed,
        workers=workers,
        command=command,
        fresh=fresh,
    )
    results, path = _run_with_progress(out, len(keys), quiet=json_out, **options)
    n_ok = sum(r.status == "reproduced" for r in results)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "report": str(path),
                    "reproduced": n_ok,
                    "claims": len(results),
                    "status": {r.key: r.status for r in results},
                    "cached": [r.key for r in results if r.cached],
                    "seconds": round(sum(r.seconds for r in results if not r.cached), 2),
                }
            )
        )
    else:
        _print_summary(results, n_ok, path)
    checked = [r for r in results if r.status != "not checked"]  # quick-mode smoke checks
    if strict and n_ok != len(checked):
        raise typer.Exit(code=1)


def _run_with_progress(out: Path, n_claims: int, quiet: bool, **options):
    """Run the claims with an outer bar (claims) and an inner one (steps of a long claim)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from attnlab.report import reproduce as run
    from attnlab.report.reproduce import ReproduceInterrupted

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=quiet,
    ) as bar:
        outer = bar.add_task("[bold]reproducing", total=n_claims)
        inner = bar.add_task("", total=1, visible=False)

        def on_claim(key, result):
            if result is None:
                bar.update(outer, description=f"[bold]checking {key}")
                bar.update(inner, visible=False, completed=0)
                return
            bar.advance(outer)
            if not quiet:
                how = "read from cache" if result.cached else f"{result.seconds:.1f} s"
                err_console.print(f"  {key}: {result.status} ({how})")

        def on_step(done, total, label):
            bar.update(
                inner, total=max(total, 1), completed=done, description=f"  {label}", visible=True
            )

        try:
            return guarded(lambda: run(out, on_claim=on_claim, progress=on_step, **options))
        except ReproduceInterrupted as stop:
            bar.stop()
            done, total = len(stop.done), len(stop.done) + len(stop.pending)
            err_console.print(
                f"interrupted: {done} of {total} claims done and cached; not run: "
                f"{', '.join(stop.pending)}. Partial report: {stop.report}. Run the same command "
                "again to resume."
            )
            raise typer.Exit(code=130) from None


def _print_summary(results, n_ok: int, path: Path) -> None:
    from rich.table import Table

    from attnlab.report.text import shorten

    table = Table(title=f"{n_ok} of {len(results)} claims reproduced")
    for col in ("claim", "verdict", "finding", "seconds"):
        table.add_column(col, overflow="fold")
    for r in results:
        colour = "green" if r.status == "reproduced" else "red"
        seconds = "cached" if r.cached else f"{r.seconds:.1f}"
        table.add_row(
            r.key, f"[{colour}]{r.status}[/]", shorten(r.error or r.measured, 100), seconds
        )
    console.print(table)
    console.print(f"report: {path}")
