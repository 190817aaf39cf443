"""The typer apps every command module registers on (kept apart so modules can import them).

Start-up rule: importing a command module must stay cheap (typer and rich only). Commands import
numpy, torch, scipy and the optional extras inside their functions, so `attnlab --help` and
`attnlab --version` never load them (benchmarks/startup.py measures this).
"""

from __future__ import annotations

import typer
from typer.core import TyperOption

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

app = typer.Typer(
    name="attnlab",
    help="attnlab: learn attention from queries, and test what attention can represent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
extract_app = typer.Typer(help="Build a random target, learn it from black-box queries, report.", no_args_is_help=True)
app.add_typer(extract_app, name="extract")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"attnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print attnlab's version and exit."),
) -> None:
    """attnlab: learn attention from queries, and test what attention can represent."""
