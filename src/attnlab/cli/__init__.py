"""The `attnlab` command line. Each command lives in its own module and registers on cli.apps."""

from attnlab.cli.apps import app
from attnlab.cli import info  # noqa: F401  (registers commands)
from attnlab.cli import construct  # noqa: F401
from attnlab.cli import tasks  # noqa: F401
from attnlab.cli import experiments  # noqa: F401
from attnlab.cli import reproduce  # noqa: F401
from attnlab.cli import serve  # noqa: F401
from attnlab.cli import extract_single_head  # noqa: F401
from attnlab.cli import multihead  # noqa: F401
from attnlab.cli import extract_ffn  # noqa: F401


def main() -> None:
    app()


__all__ = ["app", "main"]
