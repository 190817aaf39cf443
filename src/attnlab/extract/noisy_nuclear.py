"""Matrix-free low-rank recovery from rank-one measurements (the convex program of Theorem 5.1).

Given y_k = a_k^T W b_k (+ noise), k = 1..m, with (optional) weights w_k = 1 / sigma_k, solve

    min_W  1/2 sum_k w_k^2 (a_k^T W b_k - y_k)^2 + lam ||W||_*

by accelerated proximal gradient (FISTA with backtracking and adaptive restart; the proximal step is
singular value thresholding), with continuation in lam from ||A^*(y)||_2 (where W = 0 is optimal)
down to the target: for noisy data lam = 2 E||A^*(eps)||_2 with eps the unit-variance weighted
noise (Negahban and Wainwright's choice, estimated from one draw of eps); for exact data lam
shrinks until the rank the thresholding keeps gives an exact fit. The result is then polished on
the rank it found: Gauss-Newton on W = L R^T, each step solved by conjugate gradients on the
normal equations (CGLS). That removes the nuclear norm's shrinkage bias (noisy data: the weighted
rank-r least-squares fit) and takes exact data to float64 accuracy.

Nothing of size m x m is formed. The measurement operator and its adjoint are applied from the
probe vectors: A(W) = rowsum((a W) * b) costs O(m d^2) (O(m d r) for factors), A^*(z) = (a * z)^T b
is one matrix product, and the polish needs only O(m d r) products. Memory is O(m d + d^2): the
probe matrices, a few m x d temporaries and d x d iterates. The constrained program of
attnlab.extract.single_head.lowrank (ADMM with the m x m Gram matrix's Cholesky factor) solves the
same problem but needs O(m^2) memory (about 19 GB at d = 384, r = 32).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

# FISTA per continuation stage: iteration cap and relative-change tolerance (intermediate, final).
# Noisy data only need the final stage's rank and subspace (the polish refits), exact data more.
STAGE_ITERATIONS, FINAL_ITERATIONS = 60, 400
STAGE_TOL, FINAL_TOL, FINAL_TOL_NOISY = 1e-3, 1e-6, 1e-4
# lam shrinks by this factor per stage.
CONTINUATION = 0.5
# Exact data: a polished fit with relative residual at most this is accepted.
EXACT_RESIDUAL = 1e-12
# ... and one below this is nearly exact: the rank tried is at least the true one.
NEAR_EXACT = 1e-6


@dataclass
class NuclearReport:
    """How a matrix-free recovery went."""

    iterations: int  # FISTA iterations over all stages
    rank: int  # rank of the returned W
    residual: float  # weighted relative residual ||w (A(W) - y)|| / ||w y||
    polish_steps: int  # Gauss-Newton steps
    lam: float  # final lam, relative to ||A^*(w y)||_2
    seconds: float


class RankOneMeasurements:
    """The weighted map W -> (w_k a_k^T W b_k)_k and its adjoint, applied from a and b alone."""

    def __init__(self, a: np.ndarray, b: np.ndarray, weights: np.ndarray | None = None):
        self.a = np.ascontiguousarray(a, dtype=np.float64)
        self.b = np.ascontiguousarray(b, dtype=np.float64)
        if self.a.ndim != 2 or self.a.shape != self.b.shape:
            raise ValueError(
                f"a and b must be (m, d) arrays of the same shape, got {self.a.shape} and {self.b.shape}"
            )
        m = self.a.shape[0]
        self.w = np.ones(m) if weights is None else np.asarray(weights, dtype=np.float64)
        if self.w.shape != (m,) or not np.all(np.isfinite(self.w)) or np.any(self.w < 0):
            raise ValueError(f"weights must be {m} finite numbers >= 0")

    @property
    def shape(self) -> tuple[int, int]:
        return self.a.shape[0], self.a.shape[1]

    def apply(self, W: np.ndarray) -> np.ndarray:
        return self.w * np.einsum("kd,kd->k", self.a @ W, self.b)

    def apply_factors(self, L: np.ndarray, R: np.ndarray) -> np.ndarray:
        """A(L R^T) in O(m d r)."""
        return self.w * np.einsum("kr,kr->k", self.a @ L, self.b @ R)

    def adjoint(self, z: np.ndarray) -> np.ndarray:
        return (self.a * (self.w * z)[:, None]).T @ self.b

    def adjoint_right(self, z: np.ndarray, R: np.ndarray) -> np.ndarray:
        """A^*(z) R in O(m d r)."""
        return self.a.T @ ((self.w * z)[:, None] * (self.b @ R))

    def adjoint_left(self, z: np.ndarray, L: np.ndarray) -> np.ndarray:
        """A^*(z)^T L in O(m d r)."""
        return self.b.T @ ((self.w * z)[:, None] * (self.a @ L))

    def norm_squared(self, rng: np.random.Generator, iterations: int = 8) -> float:
        """||A||^2 = the largest eigenvalue of A^* A, by power iteration (a slight overestimate)."""
        d = self.a.shape[1]
        X = rng.standard_normal((d, d))
        X /= np.linalg.norm(X)
        value = 0.0
        for _ in range(iterations):
            Y = self.adjoint(self.apply(X))
            value = float(np.linalg.norm(Y))
            if value == 0.0:
                return 0.0
            X = Y / value
        return 1.05 * value


def _svt(X: np.ndarray, threshold: float):
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    s = np.maximum(s - threshold, 0.0)
    k = int(np.count_nonzero(s))
    U, s, Vt = U[:, :k], s[:k], Vt[:k]
    return (U * s) @ Vt, U * s, Vt.T


def nuclear_norm_solve(
    a: np.ndarray,
    b: np.ndarray,
    y: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    noisy: bool = False,
    rank: int | None = None,
    lam: float | None = None,
    seed: int = 0,
    exact_residual: float = EXACT_RESIDUAL,
) -> tuple[np.ndarray, NuclearReport]:
    """Low-rank W with a_k^T W b_k ~ y_k, matrix-free (see the module docstring).

    Parameters
    ----------
    a, b : (m, d) probe vectors; y : (m,) measurements.
    weights : w_k = 1 / sigma_k when the noise of y_k has standard deviation sigma_k (so weighted
        noise has unit variance); None: all 1.
    noisy : True: stop the continuation at lam = 2 E||A^*(eps)||_2 (eps unit-variance) and polish
        there (the weighted rank-r least-squares fit); False: the data are exact, continue until a
        polished low-rank fit is exact to float64 accuracy.
    rank : the rank to polish at, when known; None: the rank the thresholding keeps.
    lam : override the final lam (in units of the weighted data, as in the objective).
    exact_residual : exact data: the relative residual below which a polished fit is accepted
        (data read through a logit inversion are exact only to ~1e-13, not to 1e-15).
    """
    started = time.perf_counter()
    op = RankOneMeasurements(a, b, weights)
    m, d = op.shape
    y = np.asarray(y, dtype=np.float64)
    if y.shape != (m,) or not np.all(np.isfinite(y)):
        raise ValueError(f"y must be {m} finite numbers, got shape {y.shape}")
    if rank is not None and not 1 <= rank <= d:
        raise ValueError(f"rank must be between 1 and d = {d}, got {rank!r}")
    rng = np.random.default_rng(seed)
    yw = op.w * y
    scale = float(np.linalg.norm(yw))
    if scale == 0.0:
        return np.zeros((d, d)), NuclearReport(0, 0, 0.0, 0, 0.0, time.perf_counter() - started)
    yw = yw / scale  # unit data; W is scaled back at the end
    lam_top = float(np.linalg.norm(op.adjoint(yw), 2))
    if lam is not None:
        lam_final = float(lam) / scale
    elif noisy:
        eps = rng.standard_normal(m)
        lam_final = 2.0 * float(np.linalg.norm(op.adjoint(eps), 2)) / scale
    else:
        lam_final = 1e-9 * lam_top
    lam_final = min(lam_final, lam_top)
    step = 1.0 / op.norm_squared(rng)

    W, AW = np.zeros((d, d)), np.zeros(m)
    current = CONTINUATION * lam_top
    iterations, tried = 0, set()
    found = 0
    while True:
        current = max(current, lam_final)
        final = current == lam_final
        W, AW, found, its, step = _fista(
            op,
            yw,
            W,
            AW,
            current,
            step,
            FINAL_ITERATIONS if final else STAGE_ITERATIONS,
            (FINAL_TOL_NOISY if noisy else FINAL_TOL) if final else STAGE_TOL,
        )
        iterations += its
        target = rank if rank is not None else found
        if not noisy and 0 < target <= found and target not in tried:
            tried.add(target)
            polished = _polish(op, W, yw, target, noisy=False)
            best = polished if polished is not None and polished[2] <= exact_residual else None
            best_rank = target
            # the thresholded rank can jump past the true one: a nearly exact fit means "at least
            # this rank", so walk down while fits stay nearly exact and keep the lowest exact one
            near = polished is not None and polished[2] <= NEAR_EXACT
            while rank is None and near and target > 1:
                target -= 1
                tried.add(target)
                lower = _polish(op, W, yw, target, noisy=False)
                near = lower is not None and lower[2] <= NEAR_EXACT
                if lower is not None and lower[2] <= exact_residual:
                    best, best_rank = lower, target
            if best is not None:
                return _done(best, best_rank, iterations, current / lam_top, scale, started)
        if final:
            break
        current *= CONTINUATION
    residual = float(np.linalg.norm(AW - yw))
    if noisy and rank is None and found > 0:
        chosen = _smallest_consistent_rank(op, W, yw, found, scale)
        if chosen is not None:
            return _done(chosen[1], chosen[0], iterations, lam_final / lam_top, scale, started)
    target = rank if rank is not None else found
    if target > 0:
        polished = _polish(op, W, yw, target, noisy=noisy)
        if polished is not None and (noisy or polished[2] <= residual):
            return _done(polished, target, iterations, lam_final / lam_top, scale, started)
    return W * scale, NuclearReport(
        iterations, found, residual, 0, lam_final / lam_top, time.perf_counter() - started
    )


def _done(polished, rank, iterations, lam, scale, started):
    W, steps, residual = polished
    return W * scale, NuclearReport(
        iterations, rank, residual, steps, lam, time.perf_counter() - started
    )


def _fista(op, y, W, AW, lam, step, max_iter, tol):
    """FISTA from W at one lam, with backtracking (step halves if the quadratic bound fails) and
    adaptive restart (momentum reset when the objective rises). Returns W, A(W), rank, its, step."""
    W_prev, AW_prev, t = W, AW, 1.0
    objective = 0.5 * float(np.sum((AW - y) ** 2)) + lam * float(
        np.sum(np.linalg.svd(W, compute_uv=False))
    )
    found = int(np.linalg.matrix_rank(W)) if np.any(W) else 0
    its = 0
    for its in range(1, max_iter + 1):  # noqa: B007 (its is returned)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        beta = (t - 1.0) / t_next
        Y = W + beta * (W - W_prev)
        AY = AW + beta * (AW - AW_prev)
        residual_Y = AY - y
        f_Y = 0.5 * float(residual_Y @ residual_Y)
        G = op.adjoint(residual_Y)
        while True:
            W_new, L, R = _svt(Y - step * G, step * lam)
            AW_new = op.apply_factors(L, R)
            f_new = 0.5 * float(np.sum((AW_new - y) ** 2))
            D = W_new - Y
            if f_new <= f_Y + float(np.sum(G * D)) + float(np.sum(D * D)) / (2.0 * step) + 1e-15:
                break
            step *= 0.5
        new_objective = f_new + lam * float(np.sum(np.linalg.norm(L, axis=0)))
        change = float(np.linalg.norm(W_new - W))
        W_prev, AW_prev, W, AW = W, AW, W_new, AW_new
        found = L.shape[1]
        t = 1.0 if new_objective > objective else t_next  # restart on a rise
        objective = new_objective
        if change <= tol * max(float(np.linalg.norm(W)), 1e-300):
            break
    return W, AW, found, its, step


def _smallest_consistent_rank(op, W, y, found, scale):
    """Noisy data, rank unknown: the smallest rank k <= found whose polished fit leaves a weighted
    residual consistent with unit-variance noise, ||r||^2 <= (m - k (2d - k)) + 3 sqrt(2 (m - ...))
    (a chi-squared test; the thresholding alone keeps a few noise components). Bisection over k;
    None if even `found` fails the test (the weights underestimate the noise)."""
    m, d = op.shape
    unit = 1.0 / scale  # the weighted noise has unit variance; y was divided by scale

    def consistent(k):
        polished = _polish(op, W, y, k, noisy=True)
        if polished is None:
            return None
        slack = m - k * (2 * d - k)
        return polished, (polished[2] * np.linalg.norm(y) / unit) ** 2 <= slack + 3.0 * math.sqrt(
            2.0 * slack
        )

    # Start at the widest gap of the thresholded spectrum (the noise components are much smaller
    # than the signal's when the noise allows recovery at all), then walk to the smallest
    # consistent rank: usually two polishes.
    s = np.linalg.svd(W, compute_uv=False)[:found]
    s = s[s > 1e-6 * s[0]]  # components barely above the threshold make meaningless gaps
    k = int(np.argmax(s[:-1] / s[1:])) + 1 if len(s) > 1 else 1
    results: dict[int, tuple] = {}

    def test(k):
        if k not in results:
            results[k] = consistent(k)
        return results[k]

    if not (test(k) and test(k)[1]):  # the gap misled: the smallest consistent rank from below
        for k in range(1, found + 1):
            if test(k) is None:
                return None  # no slack left: larger ranks cannot be tested either
            if test(k)[1]:
                break
        else:
            return None
    while k > 1 and test(k - 1) and test(k - 1)[1]:
        k -= 1
    return k, test(k)[0]


def _polish(op, W, y, rank, *, noisy, max_steps=25, cg_iterations=200):
    """Gauss-Newton on W = L R^T (rank `rank`), each step by CGLS; None when the fit has no slack.

    Noisy data stop once a step gains less than 1e-4 of the residual (it sits at the noise);
    exact data continue to float64 accuracy. Returns (W, steps, relative residual)."""
    m, d = op.shape
    if rank * (2 * d - rank) >= m:
        return None  # as many unknowns as data: an exact fit proves nothing
    U, s, Vt = np.linalg.svd(W, full_matrices=False)
    root = np.sqrt(np.maximum(s[:rank], 1e-300))
    L, R = U[:, :rank] * root, Vt[:rank].T * root
    norm_y = float(np.linalg.norm(y))
    residual = op.apply_factors(L, R) - y
    best = float(np.linalg.norm(residual))
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007 (steps is returned)
        # inexact Newton: solve each step only as accurately as the current fit warrants
        forcing = 1e-2 if noisy else max(min(1e-2, best / max(norm_y, 1e-300)), 1e-10)
        dL, dR = _cgls(op, L, R, -residual, cg_iterations, tol=forcing)
        improved = False
        for alpha in (1.0, 0.5, 0.25, 0.125):
            L_try, R_try = L + alpha * dL, R + alpha * dR
            residual_try = op.apply_factors(L_try, R_try) - y
            value = float(np.linalg.norm(residual_try))
            if value < best:
                improved = True
                break
        if not improved:
            break
        gain = (best - value) / max(best, 1e-300)
        L, R, residual, best = L_try, R_try, residual_try, value
        if best <= 1e-15 * norm_y or gain < (1e-4 if noisy else 1e-6):
            break
    return L @ R.T, steps, best / norm_y


def _cgls(op, L, R, rhs, iterations, tol=1e-10):
    """Least-squares step (dL, dR) for J (dL, dR) ~ rhs, J = the Jacobian of (L, R) -> A(L R^T).

    J (pL, pR) = w * rowsum((a pL) * (b R) + (a L) * (b pR)) and its transpose are applied with
    a L and b R computed once: four (m x d) x (d x r) products per iteration."""
    aL, bR, w = op.a @ L, op.b @ R, op.w

    def jac(pL, pR):
        return w * (np.einsum("kr,kr->k", op.a @ pL, bR) + np.einsum("kr,kr->k", aL, op.b @ pR))

    def jac_t(r):
        wr = (w * r)[:, None]
        return op.a.T @ (wr * bR), op.b.T @ (wr * aL)

    xL, xR = np.zeros_like(L), np.zeros_like(R)
    r = rhs.copy()
    sL, sR = jac_t(r)
    pL, pR = sL.copy(), sR.copy()
    gamma = float(np.sum(sL * sL) + np.sum(sR * sR))
    gamma0 = gamma
    for _ in range(iterations):
        if gamma <= tol * tol * gamma0 or gamma == 0.0:
            break
        q = jac(pL, pR)
        qq = float(q @ q)
        if qq == 0.0:
            break
        alpha = gamma / qq
        xL += alpha * pL
        xR += alpha * pR
        r -= alpha * q
        sL, sR = jac_t(r)
        gamma_new = float(np.sum(sL * sL) + np.sum(sR * sR))
        pL = sL + (gamma_new / gamma) * pL
        pR = sR + (gamma_new / gamma) * pR
        gamma = gamma_new
    return xL, xR
