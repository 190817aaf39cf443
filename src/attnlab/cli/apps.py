"""The typer apps every command module registers on (kept apart so modules can import them)."""

import typer

app = typer.Typer(
    name="attnlab",
    help="attnlab: learn attention from queries, and test what attention can represent.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
extract_app = typer.Typer(help="Build a random target, learn it from black-box queries, report.", no_args_is_help=True)
app.add_typer(extract_app, name="extract")
