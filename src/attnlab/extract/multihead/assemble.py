"""From the learner's per-direction readings to the heads' parameters, and the final check.

Direction u_i read in full gives, for every head h, gamma_ih = u_i^T v_h and the column
W_h^T u_i (and u_i^T u_h for affine heads). With d directions U = [u_1 .. u_d] accepted, each
parameter is one linear solve against U^T; a last batch of fresh queries checks the whole model.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.multihead.direction import _not_h_heads
from attnlab.models.canonical import MultiHeadParams
from attnlab.oracle.sampling import random_sequences


def progress_range(n: int, desc: str, show: bool):
    """range(n), shown as a tqdm.auto bar when `show` (library code never prints otherwise)."""
    if not show:
        return range(n)
    from tqdm.auto import tqdm

    return tqdm(range(n), desc=desc)


def heads_from_directions(
    directions: list[np.ndarray],
    gammas: list[np.ndarray],
    weights: list[np.ndarray],
    affine: bool,
    c: float,
) -> MultiHeadParams:
    """(W_h, v_h [, u_h], c) from d directions u_i, their gammas (H,) and weight columns.

    weights[i] is (d [+ 1], H): column h holds W_h^T u_i (and, for affine heads, u_i^T u_h last).
    """
    Umat = np.array(directions).T  # columns u_i
    if np.linalg.cond(Umat) > 1e6:
        raise ExtractionError(
            "the accepted key directions are nearly dependent; rerun with another seed"
        )
    d = Umat.shape[0]
    gam = np.array(gammas)  # (d, H): gam[i, h] = u_i^T v_h
    v = np.linalg.solve(Umat.T, gam).T
    Wt = np.array(weights)  # (d, d [+ 1], H): Wt[i, :d, h] = W_h^T u_i, Wt[i, d, h] = u_i^T u_h
    W = np.stack(  # rows u_i^T W_h -> W_h
        [np.linalg.solve(Umat.T, Wt[:, :d, h]) for h in range(gam.shape[1])]
    )
    u_key = np.linalg.solve(Umat.T, Wt[:, d, :]).T if affine else None
    return MultiHeadParams(W, v, u_key, c)


def check(
    ask: Callable[[str, list[np.ndarray]], np.ndarray],
    rng: np.random.Generator,
    params: MultiHeadParams,
    n: int,
) -> None:
    """n fresh sequences (lengths 2..8, stage "check"): raise if the model misses them by > 1e-6."""
    seqs = random_sequences(rng, params.d, n, lengths=(2, 8))
    answers = ask("check", seqs)
    predicted = np.array([params(s[None])[0] for s in seqs])
    scale = max(1.0, float(np.max(np.abs(answers))))
    worst = float(np.max(np.abs(predicted - answers))) / scale
    if worst > 1e-6:
        raise ExtractionError(
            f"the recovered {params.heads}-head model misses the oracle by {worst:.2e} (relative) "
            f"on fresh queries: {_not_h_heads(params.heads)}"
        )


__all__ = ["check", "heads_from_directions", "progress_range"]
