"""The typer apps every command module registers on (kept apart so modules can import them).

Start-up rule: importing a command module must stay cheap (typer and rich only). Commands import
numpy, torch, scipy and the optional extras inside their functions, so `attnlab --help` and
`attnlab --version` never load them (benchmarks/startup.py measures this).
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup, TyperOption

from attnlab._version import __version__


def _flags_without_type(original):
    """typer's rich help prints `<bool>` beside on/off flags; a flag takes no value, so show none."""

    def display_type_rich(self, ctx):
        if self.is_flag and self.metavar is None:
            return None
        return original(self, ctx)

    return display_type_rich


if not getattr(TyperOption.display_type_rich, "_attnlab_flags", False):
    TyperOption.display_type_rich = _flags_without_type(TyperOption.display_type_rich)
    TyperOption.display_type_rich._attnlab_flags = True  # type: ignore[attr-defined]


def _known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or a bad file, not a bug: one line on stderr and exit 2."""
    import sqlite3

    from attnlab.errors import AttnlabError

    known: list[type[BaseException]] = [
        AttnlabError,
        ValueError,
        OSError,
        sqlite3.DatabaseError,
        ArithmeticError,
        MemoryError,
    ]
    try:
        from pydantic import ValidationError

        known.append(ValidationError)
    except ImportError:
        pass
    return tuple(known)


class GuardedGroup(TyperGroup):
    """The root group: any known error a command lets through becomes one escaped line, exit 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _known_errors() as exc:
            if isinstance(exc, ModuleNotFoundError):
                from attnlab._optional import as_missing_dependency

                missing = as_missing_dependency(exc)
                if missing is None:
                    raise
                exc = missing
            from attnlab.cli.output import fail

            fail(exc)


INT64_LIMIT = 2**63


def _bounded_values(original):
    """Every whole-number option and argument: refuse values past int64 (numpy, torch and sqlite
    all overflow there) and NaN floats, as a usage error naming the option, before a command runs."""

    def process_value(self, ctx, value):
        value = original(self, ctx, value)
        for item in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) >= INT64_LIMIT:
                raise typer.BadParameter(
                    f"{item} is too large (at most 2**63 - 1)", ctx=ctx, param=self
                )
            if isinstance(item, float) and item != item:
                raise typer.BadParameter(
                    "nan is not a number; give a finite value", ctx=ctx, param=self
                )
        return value

    process_value._attnlab_bounded = True  # type: ignore[attr-defined]
    return process_value


_PARAMETER_BASE = TyperOption.__mro__[1]  # typer's shared parameter class (options and arguments)
if not getattr(_PARAMETER_BASE.process_value, "_attnlab_bounded", False):
    _PARAMETER_BASE.process_value = _bounded_values(_PARAMETER_BASE.process_value)


app = typer.Typer(
    name="attnlab",
    cls=GuardedGroup,
    help="attnlab: learn attention from queries, and test what attention can represent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
extract_app = typer.Typer(
    help="Build a random target, learn it from black-box queries, report.", no_args_is_help=True
)
app.add_typer(extract_app, name="extract")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"attnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print attnlab's version and exit.",
    ),
) -> None:
    """attnlab: learn attention from queries, and test what attention can represent."""
