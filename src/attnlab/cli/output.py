"""How commands show results: a rich table for people, one JSON object on the last line for programs."""

from __future__ import annotations

import json
import math
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from attnlab.errors import AttnlabError

console = Console()
err_console = Console(stderr=True)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4g}"
    return str(value)


def emit(result: dict[str, Any], as_json: bool, title: str = "") -> None:
    """Print `result` as a two-column table, or as one JSON line."""
    if as_json:
        typer.echo(json.dumps(result, default=float))
        return
    table = Table(title=title or None, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, _fmt(value))
    console.print(table)


def fail(error: Exception) -> None:
    """Turn a library error into a clean message and exit code 2 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {error}")
    raise typer.Exit(code=2)


def guarded(fn):
    """Run fn(), turning AttnlabError / ValueError into `fail`."""
    try:
        return fn()
    except (AttnlabError, ValueError) as exc:
        fail(exc)
