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
        False, "--quick", help="Small sizes: about 2 minutes on 2 CPU cores."
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
    strict: bool = typer.Option(
        False, "--strict", help="Exit 1 unless every checked claim reproduces."
    ),
    list_claims: bool = typer.Option(False, "--list", help="List the claims and exit."),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON summary object on the last line."
    ),
) -> None:
    """Reproduce the papers' claims at default (or --quick) size and write a self-contained report."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from attnlab.report import CLAIMS, select
    from attnlab.report import reproduce as run

    keys = guarded(lambda: select(only or None, skip))
    if list_claims:
        for key in keys:
            c = CLAIMS[key]
            console.print(f"[bold]{key}[/]  ({c.part})  {c.title}")
        return
    command = (
        " ".join(["attnlab reproduce"] + sys.argv[2:]) if len(sys.argv) > 1 else "attnlab reproduce"
    )
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        disable=json_out and not err_console.is_terminal,
    ) as bar:
        task = bar.add_task("reproducing", total=len(keys))

        def on_claim(key, result):
            if result is None:
                bar.update(task, description=f"checking {key}")
            else:
                bar.advance(task)
                err_console.print(f"  {key}: {result.status} ({result.seconds:.1f} s)")

        results, path = guarded(
            lambda: run(
                out,
                quick=quick,
                only=only or None,
                skip=skip,
                seed=seed,
                workers=workers,
                on_claim=on_claim,
                command=command,
            )
        )
    n_ok = sum(r.status == "reproduced" for r in results)
    if json_out:
        typer.echo(
            json.dumps(
                {
                    "report": str(path),
                    "reproduced": n_ok,
                    "claims": len(results),
                    "status": {r.key: r.status for r in results},
                    "seconds": round(sum(r.seconds for r in results), 2),
                }
            )
        )
    else:
        table = Table(title=f"{n_ok} of {len(results)} claims reproduced")
        for col in ("claim", "status", "measured", "s"):
            table.add_column(col)
        for r in results:
            colour = "green" if r.status == "reproduced" else "red"
            short = (r.error or r.measured).splitlines()[0][:90] if (r.error or r.measured) else ""
            table.add_row(r.key, f"[{colour}]{r.status}[/]", short, f"{r.seconds:.1f}")
        console.print(table)
        console.print(f"report: {path}")
    checked = [r for r in results if r.status != "not checked"]  # quick-mode smoke checks
    if strict and n_ok != len(checked):
        raise typer.Exit(code=1)
