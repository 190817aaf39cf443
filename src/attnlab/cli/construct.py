"""`attnlab construct ...`: build a paper construction, verify it on the task, print m, p, errors."""

from __future__ import annotations

from typing import Any

import typer

from attnlab.cli.apps import app
from attnlab.cli.output import emit, guarded, spinner

construct_app = typer.Typer(
    help="Build the explicit constructions of Sanford-Hsu-Telgarsky and verify them.",
    no_args_is_help=True,
)
app.add_typer(construct_app, name="construct")

JSON_OPTION = typer.Option(
    False, "--json", help="One JSON object on the last line instead of a table."
)
SEED_OPTION = typer.Option(
    0, "--seed", help="Seed of the random keys and of the verification inputs."
)


def _working(message: str):
    """A spinner on stderr while a search runs (only on a terminal)."""
    return spinner(message)


def _require(condition: bool, message: str) -> None:
    """Bad option values: one clear line and exit 2 (through `guarded`), before any work."""
    if not condition:
        raise ValueError(message)


def _positive(**values: int | None) -> None:
    for name, value in values.items():
        _require(
            value is None or value >= 1, f"--{name.replace('_', '-')} must be >= 1, got {value}"
        )


def _report(construction: Any, verification: Any) -> dict[str, Any]:
    built = construction.to_dict()
    built.pop("search", None)
    result = {
        **built,
        "max_error": verification.max_error,
        "threshold": verification.threshold,
        "passed": verification.passed,
        "random_max_error": verification.random["max_error"],
        "adversarial_max_error": verification.adversarial.get("max_error", 0.0),
    }
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
    eps: float = typer.Option(
        None, "--eps", help="Target worst-case error, in (0, 1) (default 1/(2q))."
    ),
    p: int = typer.Option(
        None, "--p", help="Bits of precision (default: Thm 2 formula; Thm 3 searches)."
    ),
    theorem: int = typer.Option(
        2, "--theorem", help="2: random keys + certificates; 3: moment curve."
    ),
    certificate: str = typer.Option(
        "softmax-leak",
        "--certificate",
        help="Thm 2 query program: 'softmax-leak' (optimised) or 'least-squares'.",
    ),
    n: int = typer.Option(1, "--n", help="Sampled sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """qSA with one head: the smallest width (Thm 2) or precision (Thm 3) found, verified."""

    def run() -> None:
        from attnlab.constructions.qsa_certificates import CERTIFICATES, certificate_precision
        from attnlab.constructions.qsa_moment_curve import (
            MomentCurveQSA,
            smallest_moment_curve_precision,
        )
        from attnlab.constructions.qsa_width import verified_certificate_qsa

        _positive(N=N, q=q, d_prime=d_prime, p=p, n=n)
        _require(
            q <= N, f"--q must be <= --N (a token averages q of the N positions), got q={q}, N={N}"
        )
        _require(eps is None or 0 < eps < 1, f"--eps must be in (0, 1), got {eps}")
        _require(theorem in (2, 3), f"--theorem must be 2 or 3, got {theorem}")
        _require(
            certificate in CERTIFICATES,
            f"--certificate must be one of {', '.join(CERTIFICATES)}, got {certificate!r}",
        )
        target = 1.0 / (2 * q) if eps is None else eps
        if theorem == 2:
            bits = certificate_precision(N, q, target) if p is None else p
            with _working(f"searching the smallest key width for N={N}, q={q}"):
                construction, verification, tried = verified_certificate_qsa(
                    N, q, d_prime, target, bits, seed, n=n, certificate=certificate
                )
            result = _report(construction, verification)
            result["widths_verified"] = len(tried)
            result["holdout"] = [f"{h['key_dim']}: {h['error']:.3g}" for h in construction.holdout]
        else:
            with _working(f"searching the precision for N={N}, q={q}"):
                construction = (
                    smallest_moment_curve_precision(N, q, d_prime, target, seed=seed)
                    if p is None
                    else MomentCurveQSA.build(N, q, d_prime, target, p)
                )
                verification = construction.verify(rng=seed, n=n)
            result = _report(construction, verification)
        emit(result, json_out, title=f"qSA, Theorem {theorem}")

    guarded(run)


@construct_app.command("match2")
def construct_match2(
    N: int = typer.Option(64, "--N", help="Sequence length."),
    M: int = typer.Option(97, "--M", help="Modulus: residues in [0, M)."),
    p: int = typer.Option(
        None, "--p", help="Bits of precision (default: the smallest that verifies)."
    ),
    residual: bool = typer.Option(
        False,
        "--residual/--no-residual",
        help="Width 2 plus a residual (psi sees x_i) instead of width 3 without.",
    ),
    n: int = typer.Option(32, "--n", help="Sampled (and near-miss) sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Match2 with one attention unit: m = 3 and no residual (default), or m = 2 plus a residual."""

    def run() -> None:
        import numpy as np

        from attnlab.constructions.match2 import (
            Match2Construction,
            Match2WidthThree,
            smallest_match_precision,
        )

        _positive(N=N, p=p, n=n)
        _require(M >= 2, f"--M must be >= 2 (residues mod M), got {M}")
        kind = Match2Construction if residual else Match2WidthThree
        with _working("verifying"):
            construction = (
                smallest_match_precision(lambda bits: kind.build(N, M, bits), seed, n)
                if p is None
                else kind.build(N, M, p)
            )
            verification = construction.verify(rng=np.random.default_rng([seed, 1]), n=n)
        emit(
            _report(construction, verification),
            json_out,
            title="Match2, one unit"
            + (" (width 2 + residual)" if residual else " (width 3, no residual)"),
        )

    guarded(run)


@construct_app.command("match3")
def construct_match3(
    N: int = typer.Option(32, "--N", help="Sequence length."),
    M: int = typer.Option(211, "--M", help="Modulus: residues in [0, M)."),
    local: bool = typer.Option(False, "--local", help="Windowed Match3 with one standard head."),
    window: int = typer.Option(2, "--window", help="Window half-width w (with --local)."),
    p: int = typer.Option(
        None,
        "--p",
        help="Bits of precision (default: the smallest that verifies; "
        "with --local the smallest that certifies every window).",
    ),
    n: int = typer.Option(16, "--n", help="Sampled (and near-miss) sequences to verify on."),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Match3: third-order attention of width 4, or (--local) one standard head, verified."""

    def run() -> None:
        from attnlab.constructions.match2 import smallest_match_precision
        from attnlab.constructions.match3 import ThirdOrderMatch3
        from attnlab.constructions.match3_local import smallest_local_match3

        _positive(N=N, p=p, n=n)
        _require(M >= 2, f"--M must be >= 2 (residues mod M), got {M}")
        _require(window >= 0, f"--window must be >= 0, got {window}")
        with _working("building and verifying"):
            if local:
                construction = smallest_local_match3(N, M, window, p, seed)
                title = "local Match3, one standard head"
            else:
                construction = (
                    smallest_match_precision(
                        lambda bits: ThirdOrderMatch3.build(N, M, bits), seed, n
                    )
                    if p is None
                    else ThirdOrderMatch3.build(N, M, p)
                )
                title = "Match3, third-order attention"
            verification = construction.verify(rng=seed, n=n)
        emit(_report(construction, verification), json_out, title=title)

    guarded(run)


@construct_app.command("disjointness")
def construct_disjointness(
    q: int = typer.Option(8, "--q", help="DISJ size: Alice and Bob hold q bits each (q <= 16)."),
    m: int = typer.Option(8, "--m", help="Query (key) width m'."),
    p: int = typer.Option(1, "--p", help="Bits of precision."),
    design: str = typer.Option(
        "pair-code", "--design", help="'pair-code' (made for DISJ) or 'random' (Thm 2)."
    ),
    seed: int = SEED_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Theorem 4's set-disjointness instance: does a head with m' p query bits solve all of it?"""

    def run() -> None:
        from attnlab.constructions.lower_bound import MAX_ENUMERATED_Q, measure_disjointness

        _positive(m=m, p=p)
        _require(
            1 <= q <= MAX_ENUMERATED_Q,
            f"--q must be in [1, {MAX_ENUMERATED_Q}] (all 2^q inputs are enumerated), got {q}",
        )
        _require(
            design in ("pair-code", "random"),
            f"--design must be 'pair-code' or 'random', got {design!r}",
        )
        measurement = measure_disjointness(q, m, p, seed, design)
        result = measurement.to_dict()
        witness = result.pop("witness")
        if witness is not None:
            result["witness_a"] = "".join(map(str, witness["a"]))
            result["witness_a_prime"] = "".join(map(str, witness["a_prime"]))
            result["witness_b"] = "".join(map(str, witness["b"]))
        emit(result, json_out, title=f"DISJ_{q} through one head ({design})")

    guarded(run)


@construct_app.command("match3-lower-bound")
def construct_match3_lower_bound(
    n: int = typer.Option(
        4, "--n", help="DISJ size: Alice and Bob each hold a subset of [n] (N = 2n + 1)."
    ),
    m: int = typer.Option(
        None, "--m", help="Value width of the indicator layer (default n; below n it must fail)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Theorem 7's instance: Match3 at one token decides set disjointness; checked on all 4^n pairs."""

    def run() -> None:
        from attnlab.constructions.communication import (
            MAX_ENUMERATED,
            check_match3_reduction,
            disjointness_rows,
            exhaustive_layer_errors,
            indicator_layer,
            match3_instance,
            witness_failure,
        )

        _require(
            1 <= n <= MAX_ENUMERATED,
            f"--n must be in [1, {MAX_ENUMERATED}] (all 4^n pairs are run), got {n}",
        )
        _require(m is None or 1 <= m <= n, f"--m must be in [1, n={n}], got {m}")
        instance = match3_instance(n)
        layer = indicator_layer(instance, m)
        witness = witness_failure(layer, instance)
        result = {
            **check_match3_reduction(instance),
            **disjointness_rows(n),
            "m_v": n if m is None else m,
            "message_numbers": (n if m is None else m) + 1,
            "wrong_bits_all_pairs": exhaustive_layer_errors(layer, instance),
            "witness": None
            if witness is None
            else f"A={witness['A']} A'={witness['A_prime']} B={witness['B']} layer={witness['layer_bits']} "
            f"truth={witness['true_bits']}",
        }
        emit(result, json_out, title=f"Match3 disjointness instance, n = {n}")

    guarded(run)
