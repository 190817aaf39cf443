"""Prop. 7.1's structured case: heads in known pairwise orthogonal subspaces, one at a time."""

from __future__ import annotations

import time

import numpy as np

from attnlab._random import as_generator
from attnlab.extract.convention import resolve_method
from attnlab.extract.multihead.assemble import progress_range
from attnlab.extract.result import Extraction
from attnlab.models.canonical import MultiHeadParams
from attnlab.oracle import Oracle
from attnlab.oracle.derived import subspace_oracle

METHOD_OPTIONS: dict[str, dict] = {"single-head": {}}


def measure(result: Extraction, oracle: Oracle, rng: np.random.Generator, samples: int) -> None:
    """Fill in result.fidelity from `samples` fresh random sequences (lengths 1..32)."""
    if samples < 0:
        raise ValueError(f"fidelity_samples must be >= 0, got {samples}")
    if samples:
        result.check_fidelity(oracle, samples, int(rng.integers(2**31)))


def orthogonal_heads(
    oracle: Oracle,
    *,
    bases,
    method: str = "single-head",
    method_options: dict | None = None,
    seed=0,
    fidelity_samples: int = 1000,
    progress: bool = False,
) -> Extraction:
    """Learn heads that live in known pairwise orthogonal subspaces, one single-head run per subspace.

    `bases[h]` is a (d, d_h) matrix with orthonormal columns spanning head h's subspace S_h, and
    the subspaces are pairwise orthogonal (W_h = P_h W_h P_h, v_h in S_h). Tokens inside S_h
    leave every other head with uniform attention over zero values, so the oracle restricted to
    S_h is head h alone: `single_head` recovers it with d_h^2 + d_h queries, sum_h (d_h^2 + d_h)
    in all, every one of them sent through (and counted by) `oracle`.
    Heads come back in the order of `bases`. The one method, "single-head", takes no
    method_options; `progress` shows one tqdm.auto step per subspace.
    """
    ortho_tol = 1e-10
    from attnlab.extract.single_head import single_head

    d = oracle.require_d("orthogonal_heads")
    resolve_method(method, method_options, METHOD_OPTIONS)
    bases = [np.asarray(B, dtype=np.float64) for B in bases]
    if not bases:
        raise ValueError("give at least one subspace basis")
    for h, B in enumerate(bases):
        if B.ndim != 2 or B.shape[0] != d or B.shape[1] < 1:
            raise ValueError(f"bases[{h}] must have shape ({d}, d_h) with d_h >= 1, got {B.shape}")
    stacked = np.hstack(bases)
    gram = stacked.T @ stacked
    deviation = (
        "more columns than d"
        if stacked.shape[1] > d
        else f"{np.max(np.abs(gram - np.eye(gram.shape[0]))):.1e}"
    )
    if stacked.shape[1] > d or np.max(np.abs(gram - np.eye(gram.shape[0]))) > ortho_tol:
        raise ValueError(
            "the bases must have orthonormal columns and span pairwise orthogonal subspaces "
            f"(largest deviation of the joint Gram matrix from I: {deviation}); "
            "orthonormalise them (e.g. numpy.linalg.qr) or use multi_head, which needs no subspaces"
        )
    rng = as_generator(seed)
    start, clock = oracle.queries, time.perf_counter()
    Ws, vs, stages = [], [], {}
    for h in progress_range(len(bases), "orthogonal heads", progress):
        B = bases[h]
        before = oracle.queries
        head = single_head(subspace_oracle(oracle, B), seed=rng, fidelity_samples=0)
        Ws.append(B @ head.W @ B.T)
        vs.append(B @ head.v)
        stages[f"head_{h}"] = oracle.queries - before
    dims = [B.shape[1] for B in bases]
    params = MultiHeadParams(np.stack(Ws), np.stack(vs))
    result = Extraction(
        params={"W": params.W, "v": params.v},
        queries=oracle.queries - start,
        method="orthogonal-subspaces",
        dof=sum(k * k + k for k in dims),
        seconds=time.perf_counter() - clock,
        stages=stages,
        info={"subspace_dims": dims, "heads_found": len(bases)},
        surrogate=params,
    )
    measure(result, oracle, rng, fidelity_samples)
    return result
