"""method="nuclear-norm" of noisy_single_head: the Thm 5.1 path (Gaussian rank-one probes and
nuclear-norm recovery) on a noisy or exact oracle, for heads whose W has low rank.

This is the theorem's own algorithm, run at scale by the matrix-free solver of
attnlab.extract.noisy_nuclear. It is not the adaptive skeleton path of single_head (rank="auto" /
rank=r), which reaches the information limit 2rd - r^2 + d on exact oracles by choosing its probes;
this path spends C r 2d random probes (default C = 2) and also works with noisy answers.
"""

from __future__ import annotations

import math

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.noisy import ALPHA_FLOOR, _best_rho, _probe, _read_values, _row_sizes
from attnlab.extract.noisy_nuclear import nuclear_norm_solve

# Default measurements with a known rank: this many times r (2d).
NUCLEAR_NORM_C = 2.0
# Exact oracle: logits read through the inversion carry ~1e-13 relative rounding, so a polished
# fit this close is exact (a wrong rank leaves a residual of order 1).
EXACT_LOGIT_RESIDUAL = 1e-9


# -- Theorem 5.1: nuclear-norm recovery from Gaussian rank-one probes ------------------------------


def nuclear_norm_head(oracle, d, measurements, rank, R, noise, rng):
    """Thm 5.1 path: v from one orthonormal design, then `measurements` probes
    [(s_k u_k + rho z_k); rho z_k] with u_k, z_k uniform random unit vectors (Gaussian rank-one
    measurements of W, as in the theorem), each read as a logit t_k = s_k rho u_k^T W z_k with
    its noise sigma_k; W from the matrix-free nuclear-norm solver (attnlab.extract.noisy_nuclear)
    with weights 1 / sigma_k. Probes whose |u_k^T v| is small are noisy and weigh little."""
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 1 <= rank <= d
    ):
        raise ValueError(f"rank must be a whole number between 1 and d = {d}, got {rank!r}")
    if measurements is None:
        if rank is None:
            raise ValueError(
                "method='nuclear-norm' without a rank needs method_options={'measurements': K}: the "
                "number of rank-one probes must be fixed before the rank is known"
            )
        measurements = math.ceil(NUCLEAR_NORM_C * rank * 2 * d)
    if (
        isinstance(measurements, bool)
        or not isinstance(measurements, (int, np.integer))
        or measurements < 1
    ):
        raise ValueError(f"measurements must be a positive whole number, got {measurements!r}")
    if not R > 0:
        raise ValueError(f"max_token_norm must be positive, got {R!r}")
    stages: dict = {}
    v, v_sigma, v_bound = _read_values(oracle, d, 1, R, noise, False, rng, stages)
    if not float(np.linalg.norm(v)) > 2.0 * v_bound:
        raise ExtractionError(
            f"the noise is as large as the value signal: |v| read as {np.linalg.norm(v):.3e}, with a "
            f"worst-case error of {v_bound:.3e}; lower the noise or allow larger tokens (max_token_norm)."
        )
    m = int(measurements)
    u = rng.standard_normal((m, d))
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    z = rng.standard_normal((m, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    before = oracle.queries
    pilot = min(m, 2 * d)
    rho, pilot_retries = R / 3.0, 0
    while True:  # the pilot batch sets the probe size; it is kept if the softmax is not saturated
        s_p = _row_sizes(u[:pilot], z[:pilot], rho, R)
        out_p = _probe(
            oracle, s_p[:, None] * u[:pilot], rho * z[:pilot], v, v_sigma, v_bound, noise
        )
        if pilot_retries < 6 and np.mean((out_p[3] < 0.02) | (out_p[3] > 0.98)) > 0.05:
            rho /= 8.0
            pilot_retries += 1
            continue
        break
    unit = float(np.sqrt(np.mean((out_p[0] / (s_p * rho)) ** 2)))
    sizes, parts, rhos = [s_p], [out_p], [np.full(pilot, rho)]
    if m > pilot:
        rho_rest = _best_rho(R, unit)
        s_r = _row_sizes(u[pilot:], z[pilot:], rho_rest, R)
        parts.append(
            _probe(
                oracle, s_r[:, None] * u[pilot:], rho_rest * z[pilot:], v, v_sigma, v_bound, noise
            )
        )
        sizes.append(s_r)
        rhos.append(np.full(m - pilot, rho_rest))
    stages["W"] = oracle.queries - before
    s_all, rho_all = np.concatenate(sizes), np.concatenate(rhos)
    t = np.concatenate([p[0] for p in parts])
    sigma_t = np.concatenate([p[1] for p in parts])
    alpha = np.concatenate([p[3] for p in parts])
    usable = (alpha > ALPHA_FLOOR) & (alpha < 1.0 - ALPHA_FLOOR)
    # exact answers: equal weights (the rounding floor's weights would only ill-condition the solve)
    weights = np.where(usable, 1.0 if noise is None else 1.0 / sigma_t, 0.0)
    W, report = nuclear_norm_solve(
        s_all[:, None] * u,
        rho_all[:, None] * z,
        t,
        weights=weights,
        noisy=noise is not None,
        rank=rank,
        seed=int(rng.integers(2**31)),
        exact_residual=EXACT_LOGIT_RESIDUAL,
    )
    info = {
        "measurements": m,
        "rank": report.rank if rank is None else int(rank),
        "rank_found": report.rank,
        "iterations": report.iterations,
        "polish_steps": report.polish_steps,
        "relative_residual": report.residual,
        "solver": "fista+svt, gauss-newton/cgls polish (matrix-free)",
        "max_token_norm": R,
        "pilot_retries": pilot_retries,
    }
    return W, v, stages, info
