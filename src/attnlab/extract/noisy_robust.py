"""The robust noisy single-head estimator (noisy_single_head(method="robust")): offset probes.

A probe [x1; x2] answers y = x2^T v + alpha (x1 - x2)^T v with alpha = sigmoid((x1 - x2)^T W x2).
Write u = x1 - x2 (the row side) and z = x2 (the column side); the signal is g = u^T v and the
logit t = u^T W z.

Offset probes. Every row has the same component a along q1 = v / |v| and every column the
component -kappa alpha_bar a, so z^T v = -kappa alpha_bar g and

    y = (alpha - kappa alpha_bar) g,

where alpha_bar is the mean alpha measured so far (1/2 at first). At kappa = 1 the answer is
near zero: relative noise (answers rounded to k significant digits, float32/16) errs by about
rel |alpha - alpha_bar| g instead of rel alpha g, so the logit is read to relative precision
whatever the probe scale, and the error of v_hat, which enters through z + alpha u, loses its v
component too. The tokens x1 = (1 - kappa alpha_bar) a q1 + ... and x2 = -kappa alpha_bar a q1 + ...
carry opposite parts of the signal, so g = a |v| costs (at kappa alpha_bar = 1/2) a^2 / 4 of each
token's squared norm instead of a^2: more signal per token norm for answer noise of fixed size.
But z's v component also enters every logit, so when the logits, not the token norm, limit the
probe (W large against max_token_norm^-2) a small kappa is better.

Shapes (kappa, a, b, c) are chosen per column by minimising a first-order model of the W error
(_NoiseModel: the oracle's absolute and relative noise, v's error, the slope of the sigmoid and
the conditioning of the row and column matrices) subject to every token within max_token_norm and
the typical logit at most TARGET_LOGIT, with the W scale measured from the answers so far.

The directions orthogonal to q1 are simplex frames (d unit vectors in q1's complement that sum to
zero, one frame for rows and an independent one for columns): rows a q1 + b p_k and columns
-kappa alpha_bar a q1 + c p'_j are linearly independent for any positive sizes, with singular
values ~ b and c except along q1 (a sqrt(d), kappa alpha_bar a sqrt(d)).

The first few probes (the pilot) are read before the W scale is known, from B when given or a
guess, and again, smaller, while their logits are too large to invert well. They belong to
column 0, which is read last with the shape everything else has taught; the pilot rows measured a
different column vector z_p and are folded in once all other columns are known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.noisy import (
    ALPHA_FLOOR,
    MAX_ALPHA_ERROR,
    TARGET_LOGIT,
    _logit,
    _read_values,
    _sigmoid,
    _value_basis,
    _weighted_solve,
)
from attnlab.oracle.noise import noise_bound, noise_scale

# At most this many probes (and d // 4) are read before the scale of W is known: the pilot.
PILOT_ROWS = 4
# A pilot logit above this is re-read smaller (alpha ~ 0.05: the inversion amplifies noise ~20x).
MAX_PILOT_LOGIT = 3.0


def robust_head(oracle, d, queries, B, R, noise, rng):
    """(W, v, stages, info) from offset probes; see the module docstring."""
    minimum = d * d + d
    queries = minimum if queries is None else int(queries)
    if queries < minimum:
        raise ValueError(
            f"the robust method needs at least d^2 + d = {minimum} queries, got {queries}"
        )
    if not R > 0:
        raise ValueError(f"max_token_norm must be positive, got {R!r}")
    repeat_ok = bool(getattr(noise, "random", False)) and oracle.journal is None
    blocks = queries // minimum
    stages: dict = {}

    v, v_sigma, v_bound = _read_values(oracle, d, blocks, R, noise, repeat_ok, rng, stages)
    v_norm = float(np.linalg.norm(v))
    if not v_norm > 2.0 * v_bound:
        raise ExtractionError(
            f"the noise is as large as the value signal: |v| read as {v_norm:.3e}, with a worst-case "
            f"error of {v_bound:.3e}. W is only visible through a^T v, so nothing can be guaranteed; "
            f"lower the noise or allow larger tokens (max_token_norm)."
        )

    rows_per_column = (queries - blocks * d) // d
    basis = _value_basis(v, rng)
    q1, perp = basis[:, 0], basis[:, 1:]
    row_perp = _perp_rows(perp, rows_per_column, repeat_ok, rng)  # (K, d) unit, orthogonal to q1
    col_perp = simplex_frame(perp, rng)  # (d, d) unit, orthogonal to q1
    model = _NoiseModel(noise, d, v_norm, v_sigma)
    Z = np.empty((d, d))  # column vectors z_j
    W_cols = np.empty((d, d))  # W z_j
    var_cols, bound_cols = np.empty(d), np.empty(d)
    before = oracle.queries
    # The pilot: the first rows of column 0, read before the scale of W is known. Column 0 is
    # read last (its other rows shaped with everything learnt by then) and the pilot rows are
    # folded into it once every other column is known.
    probe = _ColumnProbe(oracle, R, q1, row_perp, col_perp[0], v, v_sigma, v_bound, noise)
    pilot, pilot_retries = _pilot_rows(probe, model, R, B)
    parts = [pilot]
    first = None
    for col in [*range(1, d), 0]:
        seen = [(p[0], p[3], p[4], p[5]) for p in parts]
        unit_sq = sum(float(np.sum(t**2 / np.sum(u**2, axis=1)) / (z @ z)) for t, _, u, z in seen)
        unit = math.sqrt(unit_sq / sum(len(t) for t, *_ in seen))
        alphas = np.concatenate([np.clip(a, 0.0, 1.0) for _, a, _, _ in seen])
        alpha_bar = float(np.clip(np.mean(alphas), 0.25, 0.75))
        # a few pilot logits are a rough guide: aim a little below the target at first
        target = TARGET_LOGIT if len(alphas) > 2 * len(pilot[0]) else 0.7 * TARGET_LOGIT
        shape = model.best_shape(R, unit, alpha_bar, target=target)
        probe = _ColumnProbe(oracle, R, q1, row_perp, col_perp[col], v, v_sigma, v_bound, noise)
        rows = slice(None) if col else slice(len(pilot[0]), None)
        out = probe.ask(*probe.vectors(shape, rows))
        parts.append(out)
        t, sigma_t, bound_t, alpha, design, z = out
        Z[:, col] = z
        if col:
            solution, cov, worst = _weighted_solve(design, t, 1.0 / sigma_t, bound_t)
            W_cols[:, col] = solution
            var_cols[col], bound_cols[col] = float(np.trace(cov)), worst
        else:
            first = out
    stages["W"] = oracle.queries - before
    # The pilot rows measured u^T W z_p with z_p = sum_j beta_j z_j: with every other column
    # known they are rows of column 0 too, u^T W z_0 = (t - sum_{j>0} beta_j u^T W z_j) / beta_0.
    t_p, sigma_p, bound_p, _, u_p, z_p = pilot
    beta = np.linalg.solve(Z, z_p)
    reach = np.linalg.norm(u_p, axis=1)
    t_0 = (t_p - u_p @ (W_cols[:, 1:] @ beta[1:])) / beta[0]
    sigma_0 = np.hypot(sigma_p, reach * math.sqrt(float(beta[1:] ** 2 @ var_cols[1:])))
    bound_0 = bound_p + reach * float(np.abs(beta[1:]) @ bound_cols[1:])
    solution, cov, worst = _weighted_solve(
        np.vstack([first[4], u_p]),
        np.concatenate([first[0], t_0]),
        1.0 / np.concatenate([first[1], sigma_0 / abs(beta[0])]),
        np.concatenate([first[2], bound_0 / abs(beta[0])]),
    )
    W_cols[:, 0] = solution
    var_cols[0], bound_cols[0] = float(np.trace(cov)), worst
    Z_inv = np.linalg.inv(Z)
    W = W_cols @ Z_inv
    # The error of W_cols moves W by delta Z^-1: row j of Z^-1 weighs column j's error.
    var_w = float(np.sum(var_cols * np.sum(Z_inv**2, axis=1)))
    bound_w = math.sqrt(float(np.sum(bound_cols**2))) * float(np.linalg.norm(Z_inv, 2))
    if math.sqrt(var_w) >= 0.5 * np.linalg.norm(W):
        raise ExtractionError(
            f"the noise swamps W: the expected error of W ({math.sqrt(var_w):.3e} in Frobenius norm) is as large "
            f"as W itself ({np.linalg.norm(W):.3e}); the softmax barely moves at the probe sizes that keep it "
            f"unsaturated. Lower the noise, allow more queries (random noise), or larger tokens (max_token_norm)."
        )
    info = {
        "error_estimate": {
            "W_fro": math.sqrt(var_w),
            "v_l2": v_sigma,
            "W_fro_bound": bound_w,
            "v_l2_bound": v_bound,
        },
        "rows_per_column": rows_per_column,
        "value_designs": blocks,
        "repeats": repeat_ok,
        "max_token_norm": R,
        "pilot_retries": pilot_retries,
    }
    return W, v, stages, info


@dataclass(frozen=True)
class Shape:
    """One column's probe sizes: rows a q1 + b p_k, column -kappa alpha_bar a q1 + c p'."""

    kappa: float
    alpha_bar: float
    a: float
    b: float
    c: float


class _NoiseModel:
    """First-order W error of a column's probes, to choose their shape (up to a constant).

    Per probe: the answer errs by tau + rel |y| with y = (alpha - kappa alpha_bar) g and g = a |v|;
    v's error enters through |z + alpha u| |delta_v| / sqrt(d); the logit error is the alpha error
    over alpha (1 - alpha); the solve for W multiplies it by ||U^-1||_F ||Z^-1||_F, with singular
    values a sqrt(d) (rows, along 1) and b (the rest), kappa alpha_bar a sqrt(d) and c (columns).
    """

    KAPPAS = np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0])
    A = np.geomspace(0.02, 2.0, 24)
    C = np.geomspace(0.003, 1.0, 28)
    B_SHRINK = np.array([1.0, 0.6, 0.35, 0.2, 0.1])

    def __init__(self, noise, d, v_norm, v_sigma):
        tau = float(np.ravel(noise_scale(noise, np.zeros(1)))[0])
        rel = float(np.ravel(noise_scale(noise, np.ones(1)))[0]) - tau
        self.tau, self.rel = tau, max(rel, 1e-16)  # exact answers: the float64 floor
        self.d, self.v_norm, self.v_sigma = d, v_norm, v_sigma

    def best_shape(self, R: float, unit: float, alpha_bar: float, target=TARGET_LOGIT) -> Shape:
        d = self.d
        k, a, c, shrink = np.meshgrid(
            self.KAPPAS, R * self.A, R * self.C, self.B_SHRINK, indexing="ij"
        )
        off = k * alpha_bar
        b = shrink * np.sqrt(np.maximum(R * R - ((1 - off) * a) ** 2 - c * c, 0.0))
        ok = (b > 1e-3 * R) & ((off * a) ** 2 + c * c <= R * R)
        sigma_t = unit * np.sqrt(a * a + b * b) * np.sqrt((off * a) ** 2 + c * c)
        ok &= sigma_t <= target
        high = _sigmoid(np.minimum(sigma_t, 20.0))
        slope = high * (1.0 - high)
        miss = np.hypot((1.0 - k) * alpha_bar, high - 0.5)  # typical |alpha - kappa alpha_bar|
        g = a * self.v_norm
        alpha_err = self.tau / g + self.rel * miss
        reach = np.sqrt((miss * a) ** 2 + c * c + (alpha_bar * b) ** 2)
        alpha_err = np.hypot(alpha_err, reach * self.v_sigma / math.sqrt(d) / g)
        with np.errstate(divide="ignore", invalid="ignore"):
            amp = np.sqrt(
                (1.0 / (a * a * d) + (d - 1) / (b * b))
                * (1.0 / ((off * a) ** 2 * d) + (d - 1) / (c * c))
            )
        error = np.where(ok, alpha_err / slope * amp, np.inf)
        i = np.unravel_index(int(np.argmin(error)), error.shape)
        if not np.isfinite(error[i]):  # nothing satisfies the logit target: the smallest probe
            return Shape(0.5, alpha_bar, 0.02 * R, 0.02 * R, 0.003 * R)
        return Shape(float(k[i]), alpha_bar, float(a[i]), float(b[i]), float(c[i]))


class _ColumnProbe:
    """Asks one column's probes for a given shape: rows a q1 + b_k p_k (b_k at most the shape's b
    and small enough that |x1| <= R exactly), column z = -kappa alpha_bar a q1 + c p'; every
    probe of a column measures W z for the same z up to a scale (folded into the design rows)."""

    def __init__(self, oracle, R, q1, row_perp, col_perp, v, v_sigma, v_bound, noise):
        self.oracle, self.R, self.q1, self.rows, self.col = oracle, R, q1, row_perp, col_perp
        self.v, self.v_sigma, self.v_bound, self.noise = v, v_sigma, v_bound, noise

    def vectors(self, shape: Shape, rows: slice):
        R = self.R
        off = shape.kappa * shape.alpha_bar
        z = -off * shape.a * self.q1 + shape.c * self.col
        directions = self.rows[rows]
        room = _perp_sizes(directions, self.col, shape.c / R, (1.0 - off) * shape.a / R) * R
        u = shape.a * self.q1 + np.minimum(shape.b, room)[:, None] * directions
        return u, z

    def ask(self, u, z, z_ref=None):
        """(t, sigma_t, bound_t, alpha, design rows, z_ref): t = design @ (W z_ref)."""
        out = _offset_probe(self.oracle, u, z, self.v, self.v_sigma, self.v_bound, self.noise)
        scale = 1.0 if z_ref is None else float(np.linalg.norm(z) / np.linalg.norm(z_ref))
        return (*out, scale * u, z if z_ref is None else z_ref)


def _pilot_rows(probe, model, R, B):
    """The first rows of column 0, shaped for a guessed W scale and read again, smaller, while
    their logits are too large to invert well. Returns the probe output
    (t, sigma_t, bound_t, alpha, design rows, z_p) and the number of re-reads."""
    # a unit logit of B is the largest ||W||_2 <= B allows; without B, guess logits of 1 at
    # |u| |z| = R^2 / 2 and re-read if they come out too large
    unit = float(B) if B else 2.0 / (R * R)
    d = probe.rows.shape[1]
    rows = slice(0, max(1, min(PILOT_ROWS, d // 4)))
    noisy = model.tau > 0 or model.rel > 1e-15
    retries = 0
    while True:
        pilot = probe.ask(*probe.vectors(model.best_shape(R, unit, 0.5), rows))
        t, alpha = pilot[0], pilot[3]
        largest = float(np.max(np.abs(t)))
        clipped = bool(np.any((alpha <= ALPHA_FLOOR) | (alpha >= 1.0 - ALPHA_FLOOR)))
        saturated = bool(np.any((alpha < 0.02) | (alpha > 0.98)))
        # exact answers invert well up to the clipping (logit ~9): only saturation costs there
        too_large = (saturated or largest > MAX_PILOT_LOGIT) if noisy else largest > 6.0
        if retries >= 8 or not too_large:
            return pilot, retries
        # the softmax (nearly) saturated: W is larger than a probe of this size can read
        unit *= 8.0 if clipped else largest / TARGET_LOGIT
        retries += 1


def simplex_frame(perp: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """d unit vectors (rows) in the span of perp's d - 1 orthonormal columns that sum to zero.

    Their Gram matrix is (d I - 1 1^T) / (d - 1): rows a q1 + b_k p_k are independent for any
    a, b_k > 0 and the matrix is as well conditioned as an orthonormal one off q1.
    """
    d = perp.shape[0]
    if d == 1:
        return np.zeros((1, 1))
    M = rng.standard_normal((d, d))
    M[:, 0] = 1.0
    Q, _ = np.linalg.qr(M)
    E = Q[:, 1:] * math.sqrt(d / (d - 1.0))  # rows: unit vectors in R^(d-1), summing to zero
    return E @ perp.T


def _perp_rows(perp, count, repeat_ok, rng):
    """Row directions orthogonal to q1: a simplex frame, then repeats (random noise) or fresh ones."""
    d = perp.shape[0]
    base = simplex_frame(perp, rng)
    rows = [base]
    extra = count - d
    while extra > 0:
        if repeat_ok and extra >= d:
            rows.append(base)
            extra -= d
            continue
        g = rng.standard_normal((extra, d - 1)) @ perp.T
        g /= np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-300)
        rows.append(g)
        extra = 0
    return np.vstack(rows)


def _perp_sizes(rows: np.ndarray, col: np.ndarray, c: float, a_x1: float) -> np.ndarray:
    """The largest b_k with |a_x1 q1 + b_k p_k + c p'| <= 1 (p_k, p' unit, orthogonal to q1)."""
    cos = rows @ col
    room = 1.0 - a_x1 * a_x1 - c * c * (1.0 - cos * cos)
    return np.maximum(-c * cos + np.sqrt(np.maximum(room, 0.0)), 0.0)


def _offset_probe(oracle, u, z, v, v_sigma, v_bound, noise):
    """Ask [u_k + z; z] for every row u_k; logits with their typical and worst errors."""
    z = np.broadcast_to(z, u.shape)
    y = np.asarray(oracle(np.stack([u + z, z], axis=1)))
    g = u @ v
    alpha_raw = (y - z @ v) / g
    alpha = np.clip(alpha_raw, ALPHA_FLOOR, 1.0 - ALPHA_FLOOR)
    slope = alpha * (1.0 - alpha)
    # v's error moves alpha by (z + alpha u)^T delta_v / g (first order): its v component cancels
    # like the answer's; a random direction sees |delta_v| / sqrt(d), the worst case all of it.
    reach = np.linalg.norm(z + alpha[:, None] * u, axis=1)
    v_typ = reach * v_sigma / math.sqrt(v.shape[0])
    alpha_sigma = np.hypot(noise_scale(noise, y), v_typ) / np.abs(g)
    alpha_bound = (noise_bound(noise, y) + reach * v_bound) / np.abs(g)
    random = bool(getattr(noise, "random", False))
    if not random and np.median(alpha_bound) > MAX_ALPHA_ERROR:
        raise ExtractionError(
            f"the noise bound is comparable to the signal: an answer may be off by "
            f"{float(np.median(noise_bound(noise, y))):.3e} while the probe signal |a^T v| is only "
            f"{float(np.median(np.abs(g))):.3e} (attention error up to "
            f"{float(np.median(alpha_bound)):.2f}); no estimate of W can be guaranteed. Lower the noise or "
            f"allow larger tokens (max_token_norm)."
        )
    if random and np.median(alpha_sigma) > MAX_ALPHA_ERROR:
        raise ExtractionError(
            f"the noise (typical {float(np.median(noise_scale(noise, y))):.3e} per answer) is comparable to "
            f"the probe signal |a^T v| = {float(np.median(np.abs(g))):.3e}; give more queries so "
            f"repeats can average it, or lower the noise."
        )
    floor = 1e-16 * (np.abs(y) + np.abs(z @ v) + np.abs(g)) / np.abs(g)
    return (
        _logit(alpha),
        np.maximum(alpha_sigma, floor) / slope,
        (alpha_bound + floor) / slope,
        alpha_raw,
    )
