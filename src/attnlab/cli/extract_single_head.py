"""`attnlab extract single-head`: build a random head, extract it through an Oracle, compare.

The command runs the recipe in attnlab.evaluate.recipes: `build_target` (the head),
`build_oracle` (the black box around it: add noise or rounding models there) and
`single_head_row` (the comparison with ground truth, which never reaches the extractor).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from attnlab.cli.apps import extract_app
from attnlab.cli.output import emit, guarded, with_spinner

# Literal copies, so `--help` needs neither torch nor scipy; tests/test_startup.py checks them
# against attnlab.extract.single_head.METHODS and attnlab.oracle.noise.NOISE_KINDS.
METHODS = ("adaptive", "paper", "nuclear-norm")
NOISE_KINDS = ("bounded", "adversarial", "gaussian", "float32", "float16", "digits")


def parse_rank(text: str | None) -> int | str | None:
    """'full' (or nothing) -> None, 'auto' -> 'auto', a number -> int."""
    if text is None or text.lower() == "full":
        return None
    if text.lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--rank must be 'full', 'auto' or an integer, got {text!r}") from None


def run_single_head(run, progress: bool = True) -> dict[str, Any]:
    """The recipe evaluate.recipes.run_single_head, under a spinner."""
    from attnlab.evaluate import recipes

    return with_spinner(
        f"extracting a d={run.d} head with method={run.method}",
        progress,
        lambda: recipes.run_single_head(run),
    )


@extract_app.command("single-head")
def single_head_command(
    d: Optional[int] = typer.Option(
        None, "--d", help="Token width d of the random target (not with --target/--url)."
    ),
    rank: Optional[str] = typer.Option(
        "full", "--rank", help="What the extractor assumes: 'full', 'auto' or r."
    ),
    target_rank: Optional[int] = typer.Option(
        None,
        "--target-rank",
        help="Rank of the target's W (default: --rank if a number, else full).",
    ),
    method: str = typer.Option("adaptive", "--method", help=f"One of: {', '.join(METHODS)}."),
    scale: float = typer.Option(
        1.0, "--scale", help="Standard deviation of the target's W entries."
    ),
    affine: bool = typer.Option(
        False, "--affine", help="Target and extract an affine head (biases u, c)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the target and the extractor's probes."),
    measurements: Optional[int] = typer.Option(
        None, "--measurements", help="Rank-one measurements for --method nuclear-norm."
    ),
    fidelity_samples: int = typer.Option(
        1000, "--fidelity-samples", help="Fresh sequences for the fidelity check (0 skips)."
    ),
    noise: Optional[str] = typer.Option(
        None,
        "--noise",
        help=f"Noisy oracle: {'|'.join(NOISE_KINDS)} (uses the robust noisy extractor).",
    ),
    tau: Optional[float] = typer.Option(
        None, "--tau", help="Noise size for bounded/adversarial (bound) and gaussian (sigma)."
    ),
    digits: Optional[int] = typer.Option(
        None, "--digits", help="Significant digits for --noise digits."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(
        False, "--json", help="One JSON object on the last line instead of a table."
    ),
    target: Optional[Path] = typer.Option(
        None,
        "--target",
        help="Extract from a file: a make-target model file, or a safetensors attention layer (docs/real-models.md).",
    ),
    url: Optional[str] = typer.Option(
        None, "--url", help="Extract from an `attnlab serve` endpoint (with --key)."
    ),
    key: Optional[str] = typer.Option(
        None, "--key", envvar="ATTNLAB_KEY", help="API key for --url."
    ),
    head: int = typer.Option(0, "--head", help="--target layer file: which head."),
    num_heads: Optional[int] = typer.Option(
        None, "--num-heads", help="--target layer file: heads (default: its metadata)."
    ),
    save: Optional[Path] = typer.Option(
        None, "--save", help="With --target/--url: write the recovered head as a make-target file."
    ),
) -> None:
    """Extract a random single attention head from black-box queries and report its accuracy."""

    def go():
        from attnlab.evaluate.recipes import SingleHeadRun

        if target is not None or url is not None:  # a real source instead of a random head
            from attnlab.cli.extract_sources import extract_from_source

            if d is not None or noise is not None:
                raise ValueError(
                    "--d and --noise describe a random target; drop them with --target/--url"
                )
            report = with_spinner(
                "extracting a head",
                not no_progress,
                lambda: extract_from_source(
                    target=target,
                    url=url,
                    key=key,
                    rank=parse_rank(rank),
                    affine=affine,
                    method=method,
                    seed=seed,
                    fidelity_samples=fidelity_samples,
                    head=head,
                    num_heads=num_heads,
                    save=save,
                ),
            )
            emit(report, json_out, title="single-head extraction")
            return
        if d is None:
            raise ValueError(
                "--d is required for a random target (or give --target FILE / --url URL --key KEY)"
            )

        run = SingleHeadRun(
            d=d,
            rank=parse_rank(rank),
            target_rank=target_rank,
            method=method,
            scale=scale,
            affine=affine,
            seed=seed,
            measurements=measurements,
            fidelity_samples=fidelity_samples,
            noise=noise,
            tau=tau,
            digits=digits,
        )
        report = run_single_head(run, progress=not no_progress)
        emit(report, json_out, title="single-head extraction")

    guarded(go)


__all__ = ["parse_rank", "run_single_head"]
