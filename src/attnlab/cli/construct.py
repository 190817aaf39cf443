"""`attnlab construct ...`: build a paper construction, verify it on the task, print m, p, errors."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import typer

from attnlab.cli.apps import app
from attnlab.cli.output import emit, err_console, guarded

construct_app = typer.Typer(help="Build the explicit constructions of Sanford-Hsu-Telgarsky and verify them.",
                            no_args_is_help=True)
app.add_typer(construct_app, name="construct")

JSON_OPTION = typer.Option(False, "--json", help="One JSON object on the last line instead of a table.")
SEED_OPTION = typer.Option(0, "--seed", help="Seed of the random keys and of the verification inputs.")


def _working(message: str):
    """A spinner on stderr while a search runs (only on a terminal)."""
    return err_console.status(message) if err_console.is_terminal else nullcontext()


def _report(construction: Any, verification: Any) -> dict[str, Any]:
    built = construction.to_dict()
    built.pop("search", None)
    result = {**built, "max_error": verification.max_error, "threshold": verification.threshold,
              "passed": verification.passed,
              "random_max_error": verification.random["max_error"],
              "adversarial_max_error": verification.adversarial.get("max_error", 0.0)}
    if verification.bit_errors is not None:
        result["bit_errors"] = verification.bit_errors
    for key, value in verification.notes.items():
        if isinstance(value, (int, float, bool)):
            result[key] = value
    return result


@construct_app.command("qsa")
def construct_qsa(
    N: int = typer.Option(256, "--N", help="Sequence length."),
    q: int = typer.Option(4, "--q", help="Sparsity: each token averages q positions."),
    d_prime: int = typer.Option(4, "--d-prime", help="Dimension d' of the averaged vectors."),
    eps: float = typer.Option(None, "--eps", help="Target worst-case error (default 1/(2q))."),
    p: int = typer.Option(None, "--p", help="Bits of precision (default: Thm 2 formula; Thm 3 searches)."),
    theorem: int = typer.Option(2, "--theorem", help="2: random keys + certificates; 3: moment curve."),
    n: int = typer.Option(2, "--n", help="Sampled sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """qSA with one head: the smallest width (Thm 2) or precision (Thm 3) found, verified."""

    def run() -> None:
        from attnlab.constructions.qsa_certificates import certificate_precision, smallest_certificate_qsa
        from attnlab.constructions.qsa_moment_curve import MomentCurveQSA, smallest_moment_curve_precision

        target = 1.0 / (2 * q) if eps is None else eps
        if theorem == 2:
            bits = certificate_precision(N, q, target) if p is None else p
            with _working(f"searching the smallest key width for N={N}, q={q}"):
                construction = smallest_certificate_qsa(N, q, d_prime, target, bits, seed)
                verification = construction.verify(rng=seed, n=n)
        elif theorem == 3:
            with _working(f"searching the precision for N={N}, q={q}"):
                construction = (smallest_moment_curve_precision(N, q, d_prime, target, seed=seed) if p is None
                                else MomentCurveQSA.build(N, q, d_prime, target, p))
                verification = construction.verify(rng=seed, n=n)
        else:
            raise ValueError(f"--theorem must be 2 or 3, got {theorem}")
        emit(_report(construction, verification), json_out, title=f"qSA, Theorem {theorem}")

    guarded(run)


@construct_app.command("match2")
def construct_match2(
    N: int = typer.Option(64, "--N", help="Sequence length."),
    M: int = typer.Option(97, "--M", help="Modulus: residues in [0, M)."),
    p: int = typer.Option(None, "--p", help="Bits of precision (default: the smallest that verifies)."),
    n: int = typer.Option(32, "--n", help="Sampled (and near-miss) sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Match2 with one attention unit of width 2 (residual readout), verified."""

    def run() -> None:
        from attnlab.constructions.match2 import Match2Construction, smallest_match_precision

        with _working("verifying"):
            construction = (smallest_match_precision(lambda bits: Match2Construction.build(N, M, bits), seed, n)
                            if p is None else Match2Construction.build(N, M, p))
            verification = construction.verify(rng=seed, n=n)
        emit(_report(construction, verification), json_out, title="Match2, one unit")

    guarded(run)


@construct_app.command("match3")
def construct_match3(
    N: int = typer.Option(32, "--N", help="Sequence length."),
    M: int = typer.Option(211, "--M", help="Modulus: residues in [0, M)."),
    local: bool = typer.Option(False, "--local", help="Windowed Match3 with one standard head."),
    window: int = typer.Option(2, "--window", help="Window half-width w (with --local)."),
    p: int = typer.Option(None, "--p", help="Bits of precision (default: smallest that verifies; "
                                            "with --local default float64)."),
    n: int = typer.Option(16, "--n", help="Sampled (and near-miss) sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Match3: third-order attention of width 4, or (--local) one standard head, verified."""

    def run() -> None:
        from attnlab.constructions.match2 import smallest_match_precision
        from attnlab.constructions.match3 import ThirdOrderMatch3
        from attnlab.constructions.match3_local import smallest_local_match3

        with _working("building and verifying"):
            if local:
                construction = smallest_local_match3(N, M, window, p, seed)
                title = "local Match3, one standard head"
            else:
                construction = (smallest_match_precision(lambda bits: ThirdOrderMatch3.build(N, M, bits), seed, n)
                                if p is None else ThirdOrderMatch3.build(N, M, p))
                title = "Match3, third-order attention"
            verification = construction.verify(rng=seed, n=n)
        emit(_report(construction, verification), json_out, title=title)

    guarded(run)


@construct_app.command("disjointness")
def construct_disjointness(
    q: int = typer.Option(8, "--q", help="DISJ size: Alice and Bob hold q bits each (q <= 16)."),
    m: int = typer.Option(8, "--m", help="Query (key) width m'."),
    p: int = typer.Option(1, "--p", help="Bits of precision."),
    design: str = typer.Option("pair-code", "--design", help="'pair-code' (made for DISJ) or 'random' (Thm 2)."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Theorem 4's set-disjointness instance: does a head with m' p query bits solve all of it?"""

    def run() -> None:
        from attnlab.constructions.lower_bound import measure_disjointness

        measurement = measure_disjointness(q, m, p, seed, design)
        result = measurement.to_dict()
        witness = result.pop("witness")
        if witness is not None:
            result["witness_a"] = "".join(map(str, witness["a"]))
            result["witness_a_prime"] = "".join(map(str, witness["a_prime"]))
            result["witness_b"] = "".join(map(str, witness["b"]))
        emit(result, json_out, title=f"DISJ_{q} through one head ({design})")

    guarded(run)
