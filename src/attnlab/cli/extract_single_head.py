"""`attnlab extract single-head`: build a random head, extract it through an Oracle, compare.

The command is three steps, each a function other options can hook into: `build_target`
(the head), `build_oracle` (the black box around it: add noise or rounding models there) and
`evaluate` (the comparison with ground truth, which never reaches the extractor).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import typer

from attnlab.cli.apps import extract_app
from attnlab.cli.output import emit, err_console, guarded
from attnlab.evaluate import relative_error
from attnlab.extract.noisy import noisy_single_head
from attnlab.extract.single_head import METHODS, single_head
from attnlab.models import AffineHead, SingleHeadAttention
from attnlab.oracle import Oracle
from attnlab.oracle.noise import NOISE_KINDS, make_noise


@dataclass
class SingleHeadRun:
    """Everything the command was asked for; extra options add fields here."""

    d: int
    rank: int | str | None = None
    target_rank: int | None = None
    method: str = "adaptive"
    scale: float = 1.0
    affine: bool = False
    seed: int = 0
    measurements: int | None = None
    fidelity_samples: int = 1000
    noise: str | None = None
    tau: float | None = None
    digits: int | None = None
    oracle_options: dict[str, Any] = field(default_factory=dict)


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


def build_target(run: SingleHeadRun):
    """The random head: rank --target-rank (default: --rank when it is a number, else full)."""
    if run.d < 1:
        raise ValueError(f"--d must be at least 1, got {run.d}")
    if isinstance(run.rank, int) and not 1 <= run.rank <= run.d:
        raise ValueError(f"--rank must be between 1 and d = {run.d}, got {run.rank}; use 'full' or 'auto'")
    target_rank = run.target_rank
    if target_rank is None and isinstance(run.rank, int):
        target_rank = run.rank
    if target_rank is not None and not 1 <= target_rank <= run.d:
        raise ValueError(f"--target-rank must be between 1 and d = {run.d}, got {target_rank}")
    head_class = AffineHead if run.affine else SingleHeadAttention
    return head_class.random(run.d, rank=target_rank, scale=run.scale, seed=run.seed)


def build_oracle(target, run: SingleHeadRun) -> Oracle:
    options = dict(run.oracle_options)
    if run.noise is not None:
        # the adversary gets white-box access to the target (see AdversarialNoise)
        options["noise"] = make_noise(run.noise, tau=run.tau, digits=run.digits, target=target)
        options.setdefault("seed", run.seed)
    return Oracle(target, d=run.d, **options)


def evaluate(result, target, run: SingleHeadRun) -> dict[str, Any]:
    """Queries, accuracy against the true parameters, fidelity and time, as one flat dict."""
    truth = {name: param.detach().double().numpy() for name, param in target.named_parameters()}
    report: dict[str, Any] = {
        "method": result.method,
        "d": run.d,
        "rank": result.info.get("rank"),
        "queries": result.queries,
        "dof": result.dof,
        "queries_per_dof": result.queries / result.dof,
    }
    for name in ("W", "v", "u", "c"):
        if name in result.params and name in truth:
            report[f"rel_error_{name}"] = relative_error(result.params[name], truth[name])
    report.update(
        fidelity=result.fidelity,
        fidelity_queries=result.fidelity_queries,
        seconds=result.seconds,
        oracle_calls=result.info.get("oracle_calls"),
        max_abs_logit=result.info.get("max_abs_logit"),
    )
    if "error_estimate" in result.info:
        report.update({f"estimate_{k}": v for k, v in result.info["error_estimate"].items()})
    return report


def run_single_head(run: SingleHeadRun, progress: bool = True) -> dict[str, Any]:
    target = build_target(run)
    oracle = build_oracle(target, run)
    status = f"extracting a d={run.d} head with method={run.method}"
    if progress and err_console.is_terminal:
        with err_console.status(status):
            result = _extract(oracle, run)
    else:
        result = _extract(oracle, run)
    return evaluate(result, target, run)


def _extract(oracle: Oracle, run: SingleHeadRun):
    if oracle.noise is not None:
        if run.affine or run.rank is not None:
            raise ValueError("--noise extracts full-rank, non-affine heads (robust noisy extractor); "
                             "drop --affine and --rank")
        return noisy_single_head(oracle, "robust", seed=run.seed, fidelity_samples=run.fidelity_samples)
    return single_head(oracle, rank=run.rank, affine=run.affine, method=run.method, seed=run.seed,
                       measurements=run.measurements, fidelity_samples=run.fidelity_samples)


@extract_app.command("single-head")
def single_head_command(
    d: int = typer.Option(..., "--d", help="Token width d of the random target."),
    rank: Optional[str] = typer.Option("full", "--rank", help="What the extractor assumes: 'full', 'auto' or r."),
    target_rank: Optional[int] = typer.Option(None, "--target-rank", help="Rank of the target's W (default: --rank if a number, else full)."),
    method: str = typer.Option("adaptive", "--method", help=f"One of: {', '.join(METHODS)}."),
    scale: float = typer.Option(1.0, "--scale", help="Standard deviation of the target's W entries."),
    affine: bool = typer.Option(False, "--affine", help="Target and extract an affine head (biases u, c)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the target and the extractor's probes."),
    measurements: Optional[int] = typer.Option(None, "--measurements", help="Rank-one measurements for --method nuclear-norm."),
    fidelity_samples: int = typer.Option(1000, "--fidelity-samples", help="Fresh sequences for the fidelity check (0 skips)."),
    noise: Optional[str] = typer.Option(None, "--noise", help=f"Noisy oracle: {'|'.join(NOISE_KINDS)} (uses the robust noisy extractor)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="Noise size for bounded/adversarial (bound) and gaussian (sigma)."),
    digits: Optional[int] = typer.Option(None, "--digits", help="Significant digits for --noise digits."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object on the last line instead of a table."),
) -> None:
    """Extract a random single attention head from black-box queries and report its accuracy."""

    def go():
        run = SingleHeadRun(d=d, rank=parse_rank(rank), target_rank=target_rank, method=method,
                            scale=scale, affine=affine, seed=seed, measurements=measurements,
                            fidelity_samples=fidelity_samples, noise=noise, tau=tau, digits=digits)
        report = run_single_head(run, progress=not no_progress)
        emit(report, json_out, title="single-head extraction")

    guarded(go)


__all__ = ["SingleHeadRun", "build_oracle", "build_target", "evaluate", "parse_rank", "run_single_head"]
