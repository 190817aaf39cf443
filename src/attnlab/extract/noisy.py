"""Single-head extraction from a noisy oracle: the paper's estimator (Thm 6.1) and a robust one.

Both read v from one-token queries and W from two-token queries [(a + b); b], whose answer is
y = b^T v + alpha a^T v with alpha = sigmoid(a^T W b); noise eta on y moves alpha by
eta / (a^T v) and the logit by that over alpha (1 - alpha).

method="paper" (reference): probes [(e_i / B + e_j / 2); e_j / 2] keep every logit in [-1/2, 1/2]
  given ||W||_F <= B; alpha is clipped to [sigmoid(-1/2), sigmoid(1/2)] before the inversion;
  d^2 + d queries (times `repeats`, averaged, if asked). The signal of probe (i, j) is
  |v_i| / B: one small value coordinate spoils a whole row of W.

method="robust" (ours, in noisy_robust): offset probes at the same largest token norm (1 by
  default, the paper's e_i). Every probe's two tokens carry opposite parts of a component along
  v / |v|, so the answer is y = (alpha - alpha0) g with g = (x1 - x2)^T v and alpha0 the typical
  alpha: it is near zero, relative rounding (k significant digits, float32) reads the logit to
  relative precision, and the v component costs a quarter of the token budget it would
  otherwise. Probe shapes (signal, bilinear scale, offset) minimise a first-order error model of
  the oracle's noise under a logit target, with the W scale measured as it goes; orthogonal to v
  the rows and columns are simplex frames (independent for any sizes); weighted least squares;
  with more queries than d^2 + d, more rows per column and more value designs (exact repeats only
  where noise is random); an error estimate (typical and worst case) in info["error_estimate"].

Noise too large for any guarantee (the bound on one answer comparable to the signal |a^T v|
a probe can reach) raises ExtractionError instead of returning garbage.
"""

from __future__ import annotations

import math
import time

import numpy as np

from attnlab._random import Seed, as_generator
from attnlab.errors import ExtractionError
from attnlab.extract.convention import resolve_method, token_width
from attnlab.extract.result import Extraction
from attnlab.extract.single_head import head_function
from attnlab.extract.single_head.directions import random_orthogonal
from attnlab.oracle import Oracle
from attnlab.oracle.noise import noise_bound, noise_scale

# Robust probes aim at logits of about this size: the logit error per unit of answer noise,
# relative to the logit, 1 / (t sigma'(t)), is smallest near t = 1.5; aiming a little lower
# keeps the largest logits of a column (a few times the typical) out of saturation.
TARGET_LOGIT = 1.0
# Clipping for the robust inversion: alpha outside these means the logit exceeded ~9.
ALPHA_FLOOR = 1e-4
# A probe's worst-case alpha error above this fraction makes the inversion meaningless.
MAX_ALPHA_ERROR = 0.1


def _sigmoid(t):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(t, dtype=np.float64)))


def _logit(alpha):
    return np.log(alpha) - np.log1p(-alpha)


# The options each method takes (method_options), with their defaults.
METHOD_OPTIONS: dict[str, dict] = {
    "robust": {"queries": None, "B": None, "max_token_norm": 1.0, "noise": None},
    "paper": {"B": None, "repeats": 1, "noise": None},
    "nuclear-norm": {"measurements": None, "rank": None, "max_token_norm": 1.0, "noise": None},
}
METHODS = tuple(METHOD_OPTIONS)


def noisy_single_head(
    oracle: Oracle,
    *,
    method: str = "robust",
    method_options: dict | None = None,
    seed: Seed = 0,
    fidelity_samples: int = 0,
    progress: bool = False,
) -> Extraction:
    """Recover (W, v) of a full-rank single head from an oracle whose answers are noisy or rounded.

    Parameters
    ----------
    method : "robust" (default), "paper" or "nuclear-norm" (Theorem 5.1's program on Gaussian
        rank-one probes, for low-rank W; see _nuclear).
    method_options : for "robust": `queries`, the total to spend, >= d^2 + d (default d^2 + d;
        the first max(1, min(4, d // 4)) probes are read before the scale of W is known, and
        again, smaller, while their logits exceed 3 or saturate the softmax: that many more
        queries each time, info["pilot_retries"]); `B`, an optional bound ||W||_2 <= B that
        sizes those first probes (without it they guess logits of 1 at |u| |z| = R^2 / 2);
        `max_token_norm`, the largest token norm a probe may use (default 1, the paper's).
        For "paper": `B`, the bound ||W||_F <= B the estimator needs (required); `repeats`, ask
        every probe this many times and average (useful for random noise).
        For "nuclear-norm": `rank` (None: found by a chi-squared test on the residual),
        `measurements` (rank-one probes; default ceil(2 rank 2d), required without a rank),
        `max_token_norm`.
        All: `noise`, the noise model to plan for (default `oracle.noise`; None: exact answers).
    seed : int or numpy Generator (robust designs and the fidelity sample).
    fidelity_samples : fresh random sequences for a fidelity check afterwards (0: none).
    progress : accepted for the common convention; both methods are a handful of batched
        queries, so there is nothing to show.
    """
    options = resolve_method(method, method_options, METHOD_OPTIONS)
    d = token_width(oracle)
    noise = oracle.noise if options["noise"] is None else options["noise"]
    rng = as_generator(seed)
    started, started_queries = time.perf_counter(), oracle.queries
    if method == "paper":
        W, v, stages, info = _paper(oracle, d, options["B"], options["repeats"], noise)
    elif method == "nuclear-norm":
        from attnlab.extract.noisy_lowrank import nuclear_norm_head

        W, v, stages, info = nuclear_norm_head(
            oracle,
            d,
            options["measurements"],
            options["rank"],
            options["max_token_norm"],
            noise,
            rng,
        )
    else:
        from attnlab.extract.noisy_robust import robust_head

        W, v, stages, info = robust_head(
            oracle, d, options["queries"], options["B"], options["max_token_norm"], noise, rng
        )
    surrogate = head_function(W, v)
    result = Extraction(
        params={"W": W, "v": v},
        queries=oracle.queries - started_queries,
        method=method,
        dof=d * d + d
        if "rank_found" not in info
        else info["rank_found"] * (2 * d - info["rank_found"]) + d,
        seconds=time.perf_counter() - started,
        stages=stages,
        info=info,
        surrogate=surrogate,
    )
    if fidelity_samples:
        result.check_fidelity(oracle, fidelity_samples, int(rng.integers(2**31)))
    return result


# -- the paper's estimator ----------------------------------------------------------------------


def _paper(oracle, d, B, repeats, noise):
    if B is None or not B > 0:
        raise ValueError(
            "method='paper' needs the norm bound B >= ||W||_F (Theorem 6.1); pass B=..."
        )
    if int(repeats) != repeats or repeats < 1:
        raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
    before = oracle.queries
    tokens = np.repeat(np.eye(d), repeats, axis=0)
    v = np.asarray(oracle(tokens[:, None, :])).reshape(d, repeats).mean(axis=1)
    stages = {"values": oracle.queries - before}
    bound = float(np.max(noise_bound(noise, v))) / (
        math.sqrt(repeats) if getattr(noise, "random", False) else 1.0
    )
    mu = float(np.min(np.abs(v)))
    if mu <= 2.0 * bound:
        raise ExtractionError(
            f"the paper's estimator needs every |v_i| well above the noise (Theorem 6.1: tau = O(mu)); "
            f"here min |v_i| = {mu:.3e} against a noise bound of {bound:.3e}. Use method='robust', "
            f"which divides by |a^T v| for directions a aligned with v instead of by single coordinates."
        )
    a, b = 0.5, 1.0 / B
    i, j = np.meshgrid(np.arange(d), np.arange(d), indexing="ij")
    i, j = i.ravel(), j.ravel()
    first = np.zeros((d * d, d))
    first[np.arange(d * d), i] += b
    first[np.arange(d * d), j] += a
    second = np.zeros((d * d, d))
    second[np.arange(d * d), j] = a
    X = np.repeat(np.stack([first, second], axis=1), repeats, axis=0)
    before = oracle.queries
    y = np.asarray(oracle(X)).reshape(d * d, repeats).mean(axis=1)
    stages["W"] = oracle.queries - before
    alpha = (y - a * v[j]) / (b * v[i])
    low = float(_sigmoid(-0.5))
    t = _logit(np.clip(alpha, low, 1.0 - low))
    W = (t / (a * b)).reshape(d, d)
    return (
        W,
        v,
        stages,
        {
            "B": float(B),
            "mu": mu,
            "repeats": int(repeats),
            "clipped": int(np.sum((alpha < low) | (alpha > 1 - low))),
        },
    )


# -- probe helpers (the robust estimator is in noisy_robust; noisy_lowrank uses these) ---------


def _best_rho(R: float, unit: float) -> float:
    """Column-side probe size: logit s * rho * unit near TARGET_LOGIT with s = sqrt(R^2 - rho^2).

    Row and column directions are nearly orthogonal (random in d dimensions), so the first token
    u + z has norm about sqrt(s^2 + rho^2), not s + rho: the product s * rho can reach R^2 / 2
    (at rho = R / sqrt(2)) instead of R^2 / 4. `_row_sizes` makes |u + z| <= R exact per row.
    """
    product = TARGET_LOGIT / max(unit, 1e-300)
    # rho^2 (R^2 - rho^2) = product^2 has a real root only when product <= R^2 / 2.
    if product >= R * R / 2.0:
        return R / math.sqrt(2.0)
    return math.sqrt((R * R - math.sqrt(R**4 - 4.0 * product * product)) / 2.0)


def _row_sizes(directions: np.ndarray, z_unit: np.ndarray, rho: float, R: float) -> np.ndarray:
    """The largest s_k with |s_k u_k + rho z| <= R for unit rows u_k (so every token stays within R)."""
    c = np.sum(directions * z_unit, axis=-1)  # z_unit: one direction (d,) or one per row
    return np.maximum(-rho * c + np.sqrt(np.maximum(R * R - rho * rho * (1.0 - c * c), 0.0)), 0.0)


def _read_values(oracle, d, blocks, R, noise, repeat_ok, rng, stages):
    before = oracle.queries
    designs = [random_orthogonal(d, rng)]
    for _ in range(blocks - 1):
        designs.append(designs[0] if repeat_ok else random_orthogonal(d, rng))
    tokens = R * np.vstack([H.T for H in designs])  # rows are tokens
    y = np.asarray(oracle(tokens[:, None, :]))
    stages["values"] = oracle.queries - before
    v = np.mean([H @ y[k * d : (k + 1) * d] for k, H in enumerate(designs)], axis=0) / R
    # Orthonormal designs: each one's l2 error is |eta| / R; the designs are averaged.
    sigma = float(np.sqrt(np.sum(noise_scale(noise, y) ** 2))) / (R * blocks)
    worst = float(np.mean(np.linalg.norm(noise_bound(noise, y).reshape(blocks, d), axis=1))) / R
    return v, sigma, worst


def _value_basis(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal basis with first column v / |v| (the rest random)."""
    d = v.shape[0]
    M = rng.standard_normal((d, d))
    M[:, 0] = v
    Q, R = np.linalg.qr(M)
    return Q * np.sign(np.diag(R))


def _probe(oracle, u, z, v, v_sigma, v_bound, noise):
    """Ask [(u_k + z); z] for every row u_k; return logits with their typical and worst errors."""
    X = np.stack([u + z, np.broadcast_to(z, u.shape)], axis=1)  # z: one column (d,) or per row
    y = np.asarray(oracle(X))
    denominator = u @ v
    alpha_raw = (y - z @ v) / denominator
    alpha = np.clip(alpha_raw, ALPHA_FLOOR, 1.0 - ALPHA_FLOOR)
    slope = alpha * (1.0 - alpha)
    # Answer noise, plus the error of v entering through z^T v and a^T v.
    # (typically a random direction sees |v error| / sqrt(d); the worst case sees all of it)
    v_effect_typ = (
        (np.linalg.norm(z, axis=-1) + alpha * np.linalg.norm(u, axis=1))
        * v_sigma
        / math.sqrt(v.shape[0])
    )
    v_effect_max = (np.linalg.norm(z, axis=-1) + alpha * np.linalg.norm(u, axis=1)) * v_bound
    alpha_sigma = np.hypot(noise_scale(noise, y), v_effect_typ) / np.abs(denominator)
    alpha_bound = (noise_bound(noise, y) + v_effect_max) / np.abs(denominator)
    if np.median(alpha_bound) > MAX_ALPHA_ERROR and not getattr(noise, "random", False):
        raise ExtractionError(
            f"the noise bound is comparable to the signal: an answer may be off by "
            f"{float(np.median(noise_bound(noise, y))):.3e} while the probe signal |a^T v| is only "
            f"{float(np.median(np.abs(denominator))):.3e} (attention error up to "
            f"{float(np.median(alpha_bound)):.2f}); no estimate of W can be guaranteed. Lower the noise or "
            f"allow larger tokens (max_token_norm)."
        )
    if getattr(noise, "random", False) and np.median(alpha_sigma) > MAX_ALPHA_ERROR:
        raise ExtractionError(
            f"the noise (typical {float(np.median(noise_scale(noise, y))):.3e} per answer) is comparable to "
            f"the probe signal |a^T v| = {float(np.median(np.abs(denominator))):.3e}; give more queries so "
            f"repeats can average it, or lower the noise."
        )
    floor = 1e-16 * (np.abs(y) + np.abs(z @ v)) / np.abs(denominator)
    return (
        _logit(alpha),
        np.maximum(alpha_sigma, floor) / slope,
        (alpha_bound + floor) / slope,
        alpha_raw,
    )


def _weighted_solve(design, t, weights, bound_t):
    """Weighted least squares; returns the solution, its covariance and a worst-case error norm."""
    pinv = np.linalg.pinv(design * weights[:, None])
    solution = pinv @ (t * weights)
    cov = pinv @ pinv.T
    # Worst case over |delta t_k| <= bound_k: || pinv diag(w) delta ||_2 <= sum_k |col_k| bound_k w_k.
    worst = float(np.linalg.norm(np.abs(pinv) @ (bound_t * weights)))
    return solution, cov, worst
