"""The `attnlab` command line. Each command lives in its own module and registers on cli.apps.

Command modules import only typer, rich and cli.apps/cli.output at module level; everything
heavy is imported inside the command functions (see cli/apps.py).
"""

from attnlab.cli import (  # noqa: F401  (importing a command module registers its commands)
    construct,
    experiments,
    extract_ffn,
    extract_single_head,
    info,
    multihead,
    reproduce,
    serve,
    tasks,
)
from attnlab.cli.apps import app


def main() -> None:
    from attnlab._optional import as_missing_dependency

    try:
        app()
    except (
        ModuleNotFoundError
    ) as exc:  # an optional extra that a command imported outside `guarded`
        missing = as_missing_dependency(exc)
        if missing is None:
            raise
        from attnlab.cli.output import fail

        try:
            fail(missing)
        except Exception:  # fail() raises typer.Exit(2); outside typer's runner that is ours to map
            raise SystemExit(2) from None


__all__ = ["app", "main"]
