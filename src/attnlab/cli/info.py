"""`attnlab version`: what is installed and where it runs."""

import platform

import typer

from attnlab.cli.apps import app
from attnlab.cli.output import emit


@app.command()
def version(
    json_out: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
) -> None:
    """Show attnlab's version and the versions it runs with."""
    import numpy
    import torch

    from attnlab._version import __version__

    emit(
        {
            "attnlab": __version__,
            "python": platform.python_version(),
            "numpy": numpy.__version__,
            "torch": torch.__version__,
            "cuda": torch.cuda.is_available(),
        },
        json_out,
        title="attnlab",
    )
