"""`attnlab extract ffn` and `attnlab extract transformer`: random target, extraction, comparison.

The recipes live in attnlab.evaluate.recipes; the ground truth is read there, after the
extractor has returned.
"""

from __future__ import annotations

from typing import Any

import typer

from attnlab.cli.apps import extract_app
from attnlab.cli.output import emit, guarded, with_spinner


def run_ffn(d: int, m: int, bias: bool, seed: int, progress: bool = True) -> dict[str, Any]:
    """The recipe evaluate.recipes.ffn_row, under a spinner."""
    from attnlab.evaluate.recipes import ffn_row

    return with_spinner(
        f"extracting a {d}-{m}-1 ReLU network",
        progress,
        lambda: ffn_row(d, m, bias=bias, seed=seed),
    )


def run_transformer(
    d: int, m: int, residual: bool, seed: int, progress: bool = True
) -> dict[str, Any]:
    """The recipe evaluate.recipes.transformer_row, under a spinner."""
    from attnlab.evaluate.recipes import transformer_row

    return with_spinner(
        f"extracting a one-layer transformer (d={d}, m={m})",
        progress,
        lambda: transformer_row(d, m, residual=residual, seed=seed),
    )


@extract_app.command("ffn")
def ffn_command(
    d: int = typer.Option(32, "--d", help="Input width of the random ReLU network."),
    m: int = typer.Option(64, "--m", help="Hidden width."),
    bias: bool = typer.Option(
        False, "--bias", help="Give the network biases b and c (default: bias-free)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the network and the extractor's lines."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON object on the last line instead of a table."
    ),
) -> None:
    """Extract a random one-hidden-layer ReLU network exactly, by critical points."""
    guarded(
        lambda: emit(
            run_ffn(d, m, bias, seed, progress=not no_progress),
            json_out,
            title="ReLU FFN extraction",
        )
    )


@extract_app.command("transformer")
def transformer_command(
    d: int = typer.Option(16, "--d", help="Token width."),
    m: int = typer.Option(32, "--m", help="FFN hidden width."),
    residual: bool = typer.Option(False, "--residual", help="z(X) includes the residual x_N."),
    seed: int = typer.Option(0, "--seed", help="Seeds the model and the extractor."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON object on the last line instead of a table."
    ),
) -> None:
    """Extract a random one-layer transformer: the FFN, then W from T(X) - T(-X)."""
    guarded(
        lambda: emit(
            run_transformer(d, m, residual, seed, progress=not no_progress),
            json_out,
            title="one-layer transformer extraction",
        )
    )


__all__ = ["run_ffn", "run_transformer"]
