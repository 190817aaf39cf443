"""How commands show results: a rich table for people, one JSON object on the last line for programs.

Also the one spinner helper (`spinner`) and the error guard every command runs under.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from attnlab._optional import as_missing_dependency
from attnlab.errors import AttnlabError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def format_value(value: Any) -> str:
    """A number as people read it: 4 significant digits, scientific when tiny or huge."""
    if isinstance(value, float):
        if value == 0 or math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3e}" if abs(value) < 1e-3 or abs(value) >= 1e5 else f"{value:.4g}"
    return str(value)


_fmt = format_value  # the old private name, still imported by cli/experiments.py


def emit(result: dict[str, Any], as_json: bool, title: str = "") -> None:
    """Print `result` as a two-column table, or as one JSON line."""
    if as_json:
        typer.echo(json.dumps(result, default=float))
        return
    table = Table(title=title or None, show_header=True, header_style="bold")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for key, value in result.items():
        table.add_row(key, format_value(value))
    console.print(table)


def spinner(message: str, enabled: bool = True) -> AbstractContextManager:
    """A stderr spinner while a long step runs; nothing when disabled or stderr is not a terminal
    (so --json output and logs stay clean)."""
    return err_console.status(message) if enabled and err_console.is_terminal else nullcontext()


def with_spinner(message: str, enabled: bool, work: Callable[[], T]) -> T:
    """work() under `spinner(message, enabled)`."""
    with spinner(message, enabled):
        return work()


def fail(error: Exception) -> None:
    """Turn a library error into a clean message and exit code 2 (no traceback)."""
    message = " ".join(str(error).split()) or type(error).__name__  # one line, whatever it said
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code=2)


def guarded(fn: Callable[[], T]) -> T:
    """Run fn(), turning AttnlabError / ValueError / a missing optional extra into `fail`."""
    try:
        return fn()
    except (AttnlabError, ValueError) as exc:
        fail(exc)
    except ModuleNotFoundError as exc:
        missing = as_missing_dependency(exc)
        if missing is None:
            raise
        fail(missing)
    raise AssertionError("unreachable: fail() exits")
