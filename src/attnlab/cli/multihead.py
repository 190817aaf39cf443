"""`attnlab multihead demo`, `attnlab extract multi-head` and `attnlab extract orthogonal-heads`.

The extraction commands call the recipes in attnlab.evaluate.recipes (the comparison with ground
truth, in canonical form, is made there after the extractor returns); the extractors only ever
see the oracle.
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.table import Table

from attnlab.cli.apps import app, extract_app
from attnlab.cli.output import console, emit, guarded

# A literal copy so `--help` needs no torch; tests/test_startup.py checks it against the library.
METHODS = ("continuation", "interpolation")

multihead_app = typer.Typer(
    help="Multi-head attention: why its parameters are not identifiable.", no_args_is_help=True
)
app.add_typer(multihead_app, name="multihead")

JSON_OPTION = typer.Option(
    False, "--json", help="One JSON object on the last line instead of tables."
)


# -- the non-identifiability demo -------------------------------------------------------------
def demo_evidence(d: int, heads: int, seed: int, samples: int = 10_000) -> dict[str, Any]:
    """An equivalent pair (p, q) and the evidence that they compute one map."""
    import numpy as np

    from attnlab.models.canonical import (
        canonical,
        canonical_error,
        equivalent,
        equivalent_pair,
        maps_agree,
        single_head_probes,
    )
    from attnlab.oracle import Oracle

    if d < 1 or heads < 1:
        raise ValueError(f"--d and --heads must be at least 1, got d = {d}, heads = {heads}")
    p, q, steps = equivalent_pair(d, heads=heads, seed=seed)
    probes = single_head_probes(d, seed=seed)
    probe_answers = [Oracle(x, d=d).query_many(probes) for x in (p, q)]
    return {
        "p": p,
        "q": q,
        "steps": steps,
        "heads_p": p.heads,
        "heads_q": q.heads,
        "canonical_heads": canonical(p).heads,
        "max_map_difference": maps_agree(p, q, n=samples, lengths=(1, 64), seed=seed),
        "map_samples": samples,
        "single_head_probe_difference": float(np.max(np.abs(probe_answers[0] - probe_answers[1]))),
        "single_head_probes": len(probes),
        "canonical_forms_agree": equivalent(p, q),
        "canonical_difference": canonical_error(p, q),
    }


def _heads_table(name: str, params) -> Table:
    import numpy as np

    table = Table(title=name, header_style="bold")
    for column in ("head", "||W_h||_F", "W_h[0, :3]", "v_h"):
        table.add_column(column)
    for h in range(params.heads):
        table.add_row(
            str(h),
            f"{np.linalg.norm(params.W[h]):.4f}",
            np.array2string(params.W[h, 0, :3], precision=3),
            np.array2string(params.v[h], precision=3),
        )
    return table


@multihead_app.command("demo")
def demo_command(
    d: int = typer.Option(4, "--d", help="Token width."),
    heads: int = typer.Option(2, "--heads", help="Heads of the first parameterisation."),
    seed: int = typer.Option(
        0, "--seed", help="Seeds both parameterisations and the test queries."
    ),
    samples: int = typer.Option(
        10_000, "--samples", help="Random sequences (lengths 1..64) compared."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Show two different multi-head parameterisations that compute the same map, with the evidence."""

    def go():
        evidence = demo_evidence(d, heads, seed, samples)
        p, q, steps = evidence.pop("p"), evidence.pop("q"), evidence.pop("steps")
        if json_out:
            emit({**evidence, "steps": steps, "p": p.to_dict(), "q": q.to_dict()}, True)
            return
        console.print(_heads_table("p: a random multi-head regressor", p))
        console.print(_heads_table("q: " + "; ".join(steps), q))
        emit(evidence, False, title="p and q compute the same map")

    guarded(go)


# -- extraction -------------------------------------------------------------------------------
@extract_app.command("multi-head")
def multi_head_command(
    d: int = typer.Option(..., "--d", help="Token width d of the random target."),
    heads: int = typer.Option(..., "--heads", help="Heads H of the random target."),
    max_heads: Optional[int] = typer.Option(
        None, "--max-heads", help="Tell the learner only H <= H0 (it counts the heads)."
    ),
    method: str = typer.Option("continuation", "--method", help=f"One of: {', '.join(METHODS)}."),
    seed: int = typer.Option(0, "--seed", help="Seeds the target and the learner's probes."),
    scale: float = typer.Option(
        1.0, "--scale", help="Standard deviation of the target's W entries."
    ),
    fidelity_samples: int = typer.Option(
        1000, "--fidelity-samples", help="Fresh sequences for the fidelity check (0 skips)."
    ),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar on stderr."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Learn a random multi-head regressor's canonical heads from queries (no subspace assumption)."""
    import sys

    from attnlab.evaluate.recipes import multi_head_row

    show = not no_progress and sys.stderr.isatty()  # a bar only for a person watching a terminal
    guarded(
        lambda: emit(
            multi_head_row(
                d,
                heads,
                max_heads=max_heads,
                seed=seed,
                scale=scale,
                fidelity_samples=fidelity_samples,
                progress=show,
                method=method,
            ),
            json_out,
            title="multi-head extraction (canonical form)",
        )
    )


def parse_dims(text: str) -> list[int]:
    try:
        dims = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(
            f"--dims must be comma-separated integers such as 2,3,2; got {text!r}"
        ) from None
    if not dims:
        raise ValueError("--dims needs at least one subspace dimension")
    return dims


@extract_app.command("orthogonal-heads")
def orthogonal_heads_command(
    d: int = typer.Option(..., "--d", help="Token width d."),
    dims: str = typer.Option(
        ..., "--dims", help="Subspace dimensions, comma-separated (sum <= d), e.g. 2,3,2."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the target and the probes."),
    fidelity_samples: int = typer.Option(
        1000, "--fidelity-samples", help="Fresh sequences for the fidelity check (0 skips)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Learn heads in known pairwise orthogonal subspaces with the single-head algorithm in each."""
    from attnlab.evaluate.recipes import orthogonal_heads_row

    guarded(
        lambda: emit(
            orthogonal_heads_row(d, parse_dims(dims), seed=seed, fidelity_samples=fidelity_samples),
            json_out,
            title="multi-head extraction (orthogonal subspaces)",
        )
    )


__all__ = ["demo_evidence", "multihead_app", "parse_dims"]
