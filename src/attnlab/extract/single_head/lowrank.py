"""Low-rank matrix recovery from rank-one measurements y_k = a_k^T W b_k, in numpy/scipy only.

`nuclear_norm_recovery` solves the convex program of Theorem 5.1,

    min ||W||_*   subject to   a_k^T W b_k = y_k   (k = 1..m),

with ADMM (a Douglas-Rachford splitting: exact projection onto the affine set through the
Cholesky factor of the m x m Gram matrix, singular-value thresholding for the nuclear norm),
then polishes the result with Gauss-Newton on the factorisation W = L R^T restricted to the
rank ADMM found, which takes the first-order solution to full float64 accuracy.
`cross_factors` is the skeleton (CUR) formula used by the adaptive extractor.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg

from attnlab.errors import ExtractionError

# A pivoted skeleton core this ill-conditioned means the matrix is (numerically) of lower rank.
MAX_CORE_CONDITION = 1e12


@dataclass
class RecoveryReport:
    """How a recovery went: iterations, the rank found and the final measurement residual."""

    iterations: int
    rank: int
    residual: float
    polish_steps: int


class RankOneOperator:
    """The linear map W -> (a_k^T W b_k)_k, its adjoint and the projection onto its level sets."""

    def __init__(self, a: np.ndarray, b: np.ndarray):
        self.a, self.b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        gram = (self.a @ self.a.T) * (self.b @ self.b.T)
        try:
            self._chol = scipy.linalg.cho_factor(gram)
        except np.linalg.LinAlgError:
            raise ValueError(
                "the rank-one measurements are linearly dependent (their Gram matrix is singular); "
                "use fewer measurements than d^2 and probes in general position"
            ) from None

    def __call__(self, W: np.ndarray) -> np.ndarray:
        return np.einsum("kd,de,ke->k", self.a, W, self.b)

    def adjoint(self, z: np.ndarray) -> np.ndarray:
        return (self.a.T * z) @ self.b

    def project(self, W: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The nearest (Frobenius) matrix to W with a_k^T X b_k = y_k for all k."""
        return W - self.adjoint(scipy.linalg.cho_solve(self._chol, self(W) - y))


def singular_value_threshold(W: np.ndarray, threshold: float) -> tuple[np.ndarray, int]:
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    s = np.maximum(s - threshold, 0.0)
    keep = int(np.count_nonzero(s))
    return (U[:, :keep] * s[:keep]) @ Vt[:keep], keep


def nuclear_norm_recovery(
    a: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    *,
    rank: int | None = None,
    max_iter: int = 3000,
    tol: float = 1e-9,
    rank_tol: float = 1e-6,
    polish_every: int = 25,
    exact: float = 1e-12,
) -> tuple[np.ndarray, RecoveryReport]:
    """Minimum-nuclear-norm W with a_k^T W b_k = y_k, polished to float64 accuracy.

    Every `polish_every` ADMM iterations the current iterate is handed to the Gauss-Newton polish
    at rank `rank` (when known) or at its numerical rank (singular values above `rank_tol` times
    the largest); once a polished W fits every measurement to relative residual `exact` it is
    returned. With more generic measurements than the rank-r manifold has dimensions, such an
    exact low-rank fit is the unique one, so the residual certifies the answer. `tol` stops
    ADMM when successive iterates agree to that relative accuracy.
    """
    op = RankOneOperator(a, b)
    y = np.asarray(y, dtype=np.float64)
    least_norm = op.project(np.zeros((a.shape[1], b.shape[1])), y)
    scale = float(np.linalg.norm(least_norm))
    if scale == 0.0:
        return least_norm, RecoveryReport(0, 0, 0.0, 0)
    y_unit = y / scale
    X = least_norm / scale
    Z = X.copy()
    dual = np.zeros_like(X)
    # the threshold 1/beta is a fixed fraction of the unit-normalised top singular value,
    # which balances progress on the nuclear norm against staying near the affine set
    beta = 1.0 / (0.05 * np.linalg.norm(X, 2))
    norm_y = np.linalg.norm(y_unit)

    p, q = a.shape[1], b.shape[1]

    def polish(W):
        s = np.linalg.svd(W, compute_uv=False)
        target_rank = rank or (int(np.count_nonzero(s > rank_tol * s[0])) if s[0] > 0 else 0)
        if target_rank == 0 or target_rank * (p + q - target_rank) >= len(y):
            # an exact fit on a manifold at least as large as the data proves nothing
            return W, target_rank, 0, float("inf")
        polished, steps = gauss_newton_polish(op, W, y_unit, target_rank)
        return polished, target_rank, steps, float(np.linalg.norm(op(polished) - y_unit) / norm_y)

    iterations = 0
    for iterations in range(1, max_iter + 1):
        X = op.project(Z - dual / beta, y_unit)
        Z_new, _ = singular_value_threshold(X + dual / beta, 1.0 / beta)
        dual += beta * (X - Z_new)
        change = np.linalg.norm(Z_new - Z) + np.linalg.norm(X - Z_new)
        Z = Z_new
        if change <= tol * max(float(np.linalg.norm(Z)), 1e-300):
            break
        if iterations % polish_every == 0:
            W, found, steps, residual = polish(Z)
            if residual <= exact:
                return W * scale, RecoveryReport(iterations, found, residual, steps)
    W, found, steps, residual = polish(Z)
    if not np.isfinite(residual):
        residual = float(np.linalg.norm(op(W) - y_unit) / norm_y)
    return W * scale, RecoveryReport(iterations, found, residual, steps)


def gauss_newton_polish(
    op: RankOneOperator, W: np.ndarray, y: np.ndarray, rank: int, max_steps: int = 30
) -> tuple[np.ndarray, int]:
    """Refine W = L R^T (rank `rank`) to fit y by Gauss-Newton; quadratic convergence near a solution."""
    U, s, Vt = np.linalg.svd(W)
    root = np.sqrt(s[:rank])
    L, R = U[:, :rank] * root, Vt[:rank].T * root
    a, b = op.a, op.b
    norm_y = np.linalg.norm(y)
    best = np.linalg.norm(op(L @ R.T) - y)
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (the loop counts; its variable is read after or not needed)
        aL, bR = a @ L, b @ R
        residual = np.einsum("kr,kr->k", aL, bR) - y
        # d residual_k / dL = a_k (R^T b_k)^T, d residual_k / dR = b_k (L^T a_k)^T
        jac = np.hstack(
            [
                np.einsum("kd,kr->kdr", a, bR).reshape(len(y), -1),
                np.einsum("kd,kr->kdr", b, aL).reshape(len(y), -1),
            ]
        )
        step = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        dL, dR = step[: L.size].reshape(L.shape), step[L.size :].reshape(R.shape)
        L_new, R_new = L + dL, R + dR
        new = np.linalg.norm(op(L_new @ R_new.T) - y)
        if not new < best:
            break
        L, R, best = L_new, R_new, new
        if best <= 1e-15 * norm_y:
            break
    return L @ R.T, steps


def pivot_rows(columns: np.ndarray) -> np.ndarray:
    """Rows of a tall matrix in the order of a column-pivoted QR of its transpose.

    The first r rows span a well-conditioned r x r core (a greedy max-volume choice), which
    is what the skeleton formula divides by.
    """
    return scipy.linalg.qr(columns.T, mode="r", pivoting=True)[1]


def cross_factors(
    columns: np.ndarray, rows: np.ndarray, row_index: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rank-r matrix with the given r columns C (d x r) and r rows R (r x d), as factors.

    `row_index` says which rows of the matrix `rows` are; the core is U = C[row_index], and the
    skeleton formula M = C U^{-1} R is returned as (C, U^{-1} R), so that a change of basis
    costs O(d^2 r) rather than O(d^3).
    """
    core = columns[row_index]
    try:
        if np.linalg.cond(core) > MAX_CORE_CONDITION:
            raise np.linalg.LinAlgError
        return columns, np.linalg.solve(core, rows)
    except np.linalg.LinAlgError:
        raise ExtractionError(
            f"the {core.shape[0]} x {core.shape[0]} core of the skeleton is singular: the matrix has "
            f"lower rank than the {core.shape[0]} assumed. Pass a smaller rank, or rank='auto'."
        ) from None
