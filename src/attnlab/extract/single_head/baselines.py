"""The reference methods: method="paper" (Theorem 4.1 as written) and "nuclear-norm" (Theorem 5.1).

Both use dense Gaussian designs and are meant for small heads (d up to a few hundred).
"""

from __future__ import annotations

import math

import numpy as np

from attnlab.extract.noisy_nuclear import nuclear_norm_solve
from attnlab.extract.single_head.probes import ProbeLog, bilinear_probe
from attnlab.extract.single_head.reader import BilinearReader
from attnlab.oracle import Oracle

# Default number of rank-one measurements for method="nuclear-norm": NUCLEAR_NORM_C * r * 2d
# (capped at d^2). benchmarks/single_head.py measures the smallest C that succeeds in >= 19 of 20
# trials at d = 40, r = 2 (1.5 there, i.e. ~1.5x the free parameters); the default keeps a margin.
NUCLEAR_NORM_C = 2.0
# Largest d for which d^2 generic measurements are solved as one dense d^2 x d^2 system.
LINEAR_SOLVE_MAX_D = 64


def paper(
    oracle: Oracle,
    v: np.ndarray,
    c: float,
    affine: bool,
    rng: np.random.Generator,
    stages: dict,
    log: ProbeLog,
) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Theorem 4.1 as written: Gaussian u_k, query token e_j, one oracle call per column."""
    d = v.shape[0]
    U = rng.standard_normal((d, d))  # rows are the u_k
    u = None
    if affine:
        before = oracle.queries
        u = np.linalg.solve(U, bilinear_probe(oracle, U, np.zeros_like(U), v, c, log))
        stages["bias_u"] = oracle.queries - before
    before = oracle.queries
    T = np.empty((d, d))
    eye = np.eye(d)
    max_logit = 0.0
    for j in range(d):
        T[:, j] = bilinear_probe(oracle, U, np.tile(eye[j], (d, 1)), v, c, log)
        max_logit = max(max_logit, float(np.max(np.abs(T[:, j]))))
    stages["W"] = oracle.queries - before
    if u is not None:
        T -= (U @ u)[:, None]
    W = np.linalg.solve(U, T)
    return (
        W,
        u,
        {
            "rank": d,
            "rank_mode": "full",
            "max_abs_logit": max_logit,
            "design_condition": float(np.linalg.cond(U)),
        },
    )


def nuclear_norm(
    reader: BilinearReader, d: int, rank, measurements: int | None, rng: np.random.Generator
):
    if measurements is None:
        if rank == "auto":
            raise ValueError(
                "method='nuclear-norm' with rank='auto' needs method_options={'measurements': K}: "
                "the number of rank-one measurements must be fixed before the rank is known"
            )
        measurements = (
            d * d if rank is None else min(d * d, math.ceil(NUCLEAR_NORM_C * rank * 2 * d))
        )
    if (
        isinstance(measurements, bool)
        or not isinstance(measurements, (int, np.integer))
        or not 1 <= measurements <= d * d
    ):
        raise ValueError(
            f"measurements must be a whole number between 1 and d^2 = {d * d}, got {measurements!r}"
        )
    if measurements == d * d and d > LINEAR_SOLVE_MAX_D:
        raise ValueError(
            f"method='nuclear-norm' with d^2 = {d * d} measurements (no rank given) solves a dense "
            f"d^2 x d^2 system, too large at d = {d} > {LINEAR_SOLVE_MAX_D}: pass rank=r for a "
            f"low-rank head, or use method='adaptive' (the default), which reads a full-rank head "
            f"exactly with d^2 + d queries"
        )
    a = rng.standard_normal((measurements, d)) / np.sqrt(d)
    b = rng.standard_normal((measurements, d)) / np.sqrt(d)
    y = reader.read(a, b)
    info: dict = {"measurements": int(measurements)}
    if measurements == d * d:
        # as many generic measurements as entries: the constraints alone pin W down
        design = np.einsum("kd,ke->kde", a, b).reshape(measurements, d * d)
        W = np.linalg.solve(design, y).reshape(d, d)
        info.update(rank=d if rank in (None, "auto") else rank, solver="linear")
        return W, info
    # Matrix-free (FISTA + singular value thresholding, then a Gauss-Newton polish): memory
    # O(m d + d^2), where the ADMM of lowrank.nuclear_norm_recovery forms an m x m Gram matrix.
    W, report = nuclear_norm_solve(a, b, y, rank=rank if isinstance(rank, int) else None)
    info.update(
        rank=report.rank if rank in (None, "auto") else rank,
        rank_found=report.rank,
        solver="fista+gauss-newton (matrix-free)",
        iterations=report.iterations,
        polish_steps=report.polish_steps,
        relative_residual=report.residual,
    )
    return W, info
