"""`attnlab tasks list | sample`: the synthetic tasks, and a readable example of each."""

from __future__ import annotations

import inspect
import json
from typing import Any, Optional

import typer
from rich.table import Table

from attnlab.cli.apps import app
from attnlab.cli.output import console, emit, guarded

tasks_app = typer.Typer(
    help="Synthetic tasks (qSA, Match2, Match3 and variants): list them, sample examples.",
    no_args_is_help=True,
)
app.add_typer(tasks_app, name="tasks")

JSON_OPTION = typer.Option(
    False, "--json", help="One JSON object on the last line instead of tables."
)


def _parameter_text(default: Any) -> str:
    return "required" if default is inspect.Parameter.empty else f"default {default}"


@tasks_app.command("list")
def list_command(json_out: bool = JSON_OPTION) -> None:
    """List the registered tasks with their parameters."""
    from attnlab.tasks import list_tasks, task_class, task_parameters

    rows = []
    for name in list_tasks():
        parameters = {
            k: (None if v is inspect.Parameter.empty else v)
            for k, v in task_parameters(name).items()
        }
        rows.append(
            {"name": name, "description": task_class(name).description, "parameters": parameters}
        )
    if json_out:
        typer.echo(json.dumps({"tasks": rows}))
        return
    table = Table(title="attnlab tasks", header_style="bold")
    for column in ("name", "description", "parameters"):
        table.add_column(column)
    for name in list_tasks():
        text = ", ".join(f"{k} ({_parameter_text(v)})" for k, v in task_parameters(name).items())
        table.add_row(name, task_class(name).description, text)
    console.print(table)


def _fmt_vector(values) -> str:
    import numpy as np

    return "(" + ", ".join(f"{v:+.3f}" for v in np.atleast_1d(values)) + ")"


def _example_table(task, batch, index: int) -> Table:
    inputs = {k: v[index] for k, v in batch.inputs.items()}
    table = Table(title=f"{task.name} example {index}", header_style="bold")
    table.add_column("i", justify="right")
    if task.name == "qsa":
        for column in ("z_i", "y_i", "target_i = mean z_j, j in y_i"):
            table.add_column(column)
        for i in range(task.N):
            table.add_row(
                str(i),
                _fmt_vector(inputs["z"][i]),
                str(inputs["y"][i].tolist()),
                _fmt_vector(batch.targets[index, i]),
            )
        return table
    table.add_column("x_i", justify="right")
    if "partner" in inputs:
        table.add_column("partner p(i)", justify="right")
        table.add_column("x_i + x_p(i) mod M", justify="right")
        sums = task.pair_sums(batch.select(index).inputs)[0]
    table.add_column("target_i", justify="right")
    for i in range(task.N):
        cells = [str(i), str(inputs["x"][i])]
        if "partner" in inputs:
            cells += [str(inputs["partner"][i]), str(sums[i])]
        table.add_row(*cells, str(int(batch.targets[index, i])))
    return table


@tasks_app.command("sample")
def sample_command(
    name: str = typer.Argument(..., help="Task name (see `attnlab tasks list`)."),
    N: int = typer.Option(16, "--N", help="Sequence length."),
    q: Optional[int] = typer.Option(None, "--q", help="qsa: pointers per token."),
    d_prime: Optional[int] = typer.Option(
        None, "--d-prime", help="qsa: data dimension d' (default 4)."
    ),
    M: Optional[int] = typer.Option(None, "--M", help="match*: the modulus."),
    window: Optional[int] = typer.Option(None, "--window", help="match3-local: window radius w."),
    unbalanced: bool = typer.Option(
        False, "--unbalanced", help="match*: uniform x instead of balanced sampling."
    ),
    n: int = typer.Option(3, "--n", help="Number of examples."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Sample examples of a task and show inputs and exact targets."""

    def run() -> None:
        import numpy as np

        from attnlab.tasks import get_task

        given = {"N": N, "q": q, "d_prime": d_prime, "M": M, "window": window}
        params = {k: v for k, v in given.items() if v is not None}
        if unbalanced:
            params["balanced"] = False
        task = get_task(name, **params)
        batch = task.sample(np.random.default_rng(seed), n)
        summary: dict[str, Any] = {
            "task": task.name,
            **task.params,
            "n": n,
            "seed": seed,
            "token_dim": task.token_dim,
            "threshold": task.threshold,
        }
        if batch.targets.dtype == np.int8:
            summary["positive_rate"] = float(batch.targets.mean())
        if json_out:
            typer.echo(json.dumps({**summary, "examples": batch.to_dict()}))
            return
        for index in range(min(n, 5)):
            console.print(_example_table(task, batch, index))
        emit(
            summary,
            False,
            title=f"{task.name}: {n} example(s)" + (" (first 5 shown)" if n > 5 else ""),
        )

    guarded(run)
