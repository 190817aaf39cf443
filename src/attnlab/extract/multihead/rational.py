"""Rational-function numerics of one probe pair (u, b): fits, polishing, error bounds.

For a key direction u and a query token b, c copies of b + u followed by m copies of b answer

    F(t) = f - b^T V = sum_h gamma_h * t lam_h / (1 + t lam_h),    t = c / m,

with gamma_h = u^T v_h and lam_h = exp(s_h), s_h = u^T W_h b (+ u^T u_h for affine heads).
F(t)/t is a rational function with one pole per canonical head at -1/lam_h and residue gamma_h,
whose residues sum to u^T V (known). Everything here is pure numerics on (t, F, S) arrays.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit

SATURATION = 3.0  # continuation prefers anchors whose logits stay below this in size
DETECT_TOL = 1e-12  # a count of heads must explain the first probe pair to this (relative) residual


@dataclass(frozen=True)
class Tolerances:
    """When a fit is trusted. fit_tol: largest relative misfit; logit_tol: largest logit error
    (from rounding in the answers, propagated through the fit's Jacobian); min_gap: smallest
    logit gap accepted; max_logit: largest |logit| (beyond it a softmax saturates)."""

    fit_tol: float = 1e-9
    logit_tol: float = 1e-9
    min_gap: float = 0.03
    max_logit: float = 4.5


def layouts(points: int, exclude=()) -> list[tuple[int, int]]:
    """(copies of b + u, copies of b) for `points` ratios t = c/m, symmetric in log t around 1.

    Taken in the order t = 1, 1/2, 2, 1/3, 3, ... (t = 1 left out for an even count, to keep the
    symmetry), skipping the layouts in `exclude` (a pair's ratios already measured).
    """
    order = [(1, 1)] + [
        layout for k in range(2, points + len(exclude) + 3) for layout in ((1, k), (k, 1))
    ]
    if points % 2 == 0 and not exclude:
        order = order[1:]
    chosen = [layout for layout in order if layout not in set(exclude)][:points]
    return sorted(chosen, key=lambda cm: cm[0] / cm[1])


def pair_queries(u: np.ndarray, b: np.ndarray, layouts, center: float = 1.0) -> list[np.ndarray]:
    """Sequences [c copies of b + u, m copies of b] at ratios center * c / m.

    `center` is K or 1/K for a whole number K: the key's (or the query token's) copies are
    multiplied by K, so the ratios stay exact.
    """
    key = b + u
    up, down = (int(round(center)), 1) if center >= 1 else (1, int(round(1 / center)))
    return [
        np.vstack([np.repeat(key[None], c * up, 0), np.repeat(b[None], m * down, 0)])
        for c, m in layouts
    ]


def round_center(log_center: float, limit: float = 6.0) -> float:
    """The centre K or 1/K (K whole, K <= e^limit) nearest to exp(log_center)."""
    K = max(1, int(round(np.exp(min(abs(log_center), limit)))))
    return float(K) if log_center >= 0 else 1.0 / K


@dataclass
class HeadFit:
    gamma: np.ndarray  # u^T v_h, one per head
    s: np.ndarray  # u^T W_h b, one per head
    residual: float  # largest misfit over the data, relative to the data's scale
    t: np.ndarray | None = None  # the data it was fitted to
    F: np.ndarray | None = None
    # log of the pair's centre t0: measured at ratios t0 * t, the fitted s is the true logit
    # plus shift (centring keeps s near 0 when every head's logit is large: near-parallel heads)
    shift: float = 0.0

    def model(self, t: np.ndarray) -> np.ndarray:
        return expit(self.s[None, :] + np.log(t)[:, None]) @ self.gamma


def _polish(gamma, s, t, F, S, iterations: int = 30):
    """Gauss-Newton on F_k = sum_h gamma_h sigmoid(s_h + log t_k) and sum_h gamma_h = S."""
    log_t = np.log(t)
    for _ in range(iterations):
        sig = expit(s[None, :] + log_t[:, None])
        residual = np.concatenate([sig @ gamma - F, [gamma.sum() - S]])
        jac = np.vstack(
            [
                np.hstack([sig, sig * (1 - sig) * gamma[None, :]]),
                np.concatenate([np.ones_like(gamma), np.zeros_like(s)]),
            ]
        )
        step = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        gamma, s = gamma + step[: gamma.size], s + step[gamma.size :]
        if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(np.concatenate([gamma, s])))):
            break
    return gamma, s


def fit_heads(t: np.ndarray, F: np.ndarray, S: float, n: int) -> HeadFit | None:
    """The n-head fit of F(t) = sum_h gamma_h t lam_h / (1 + t lam_h) with sum gamma_h = S, or None.

    F(t)/t = P(t)/Q(t) with Q monic of degree n (roots -1/lam_h) and P of degree n-1 whose
    leading coefficient is S: a linear least-squares problem in the other 2n - 1 coefficients.
    """
    scale = max(float(np.max(np.abs(F))), abs(S))
    if n == 0:
        return HeadFit(np.zeros(0), np.zeros(0), 0.0 if scale == 0 else 1.0)
    if scale == 0:
        return None
    R = F / t
    powers = t[:, None] ** np.arange(n)[None, :]
    A = np.hstack([powers[:, : n - 1], -R[:, None] * powers])
    rhs = R * t**n - S * t ** (n - 1)
    coef = np.linalg.lstsq(A, rhs, rcond=None)[0]
    p = np.concatenate([coef[: n - 1], [S]])  # ascending powers
    q = np.concatenate([coef[n - 1 :], [1.0]])
    roots = np.roots(q[::-1])
    if np.any(np.abs(roots.imag) > 1e-6 * np.maximum(1.0, np.abs(roots.real))) or np.any(
        roots.real >= 0
    ):
        # Crowded poles: rounding in the linearised fit turned nearly equal real poles into a
        # complex pair. Start the nonlinear fit from the poles' moduli instead (a pair split by
        # its imaginary part), with the gammas that then fit best: the polish decides.
        if t.size < 2 * n + 1 or np.any(roots == 0) or not np.all(np.isfinite(roots)):
            # with only 2n - 1 ratios any start that converges interpolates them exactly, a wrong
            # solution included: only overdetermined data can vouch for the polished fit
            return None
        spread = np.where(roots.imag > 0, 1.0, np.where(roots.imag < 0, -1.0, 0.0)) * np.abs(
            roots.imag
        )
        s = -np.log(np.abs(roots)) + spread / np.abs(roots)
        sig = expit(s[None, :] + np.log(t)[:, None])
        system = np.vstack([sig, np.ones((1, n))])
        gamma = np.linalg.lstsq(system, np.concatenate([F, [S]]), rcond=None)[0]
        crowded = True
    else:
        crowded = False
        roots = roots.real
        mu = -roots
        dq = np.polynomial.polynomial.polyder(q)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # judged just below
            gamma = np.polynomial.polynomial.polyval(roots, p) / np.polynomial.polynomial.polyval(
                roots, dq
            )
            s = -np.log(mu)
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(s))):
        return None
    gamma, s = _polish(gamma, s, t, F, S)
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(s))):
        return None
    fit = HeadFit(gamma, s, 0.0, t, F)
    fit.residual = max(float(np.max(np.abs(fit.model(t) - F))), abs(gamma.sum() - S)) / scale
    if crowded and fit.residual > 1e-12:
        return None  # the polish from the moduli did not reach an exact fit: no trustworthy start
    return fit


def fewest_heads_fit(t: np.ndarray, F: np.ndarray, S: float, max_heads: int) -> HeadFit | None:
    """The fit with the fewest heads (<= max_heads) that explains the answers, or None."""
    for n in range(max_heads + 1):
        fit = fit_heads(t, F, S, n)
        # stricter than fit_tol: two poles 0.05 apart still let one fewer head fit to ~1e-10
        if fit is not None and fit.residual <= DETECT_TOL:
            return fit
    return None


def _data(fit: HeadFit) -> tuple[np.ndarray, np.ndarray]:
    """The ratios t and answers F a fit was made from (every fit made from data keeps them)."""
    assert fit.t is not None and fit.F is not None, "a fit without its data cannot be refitted"
    return fit.t, fit.F


def joint_polish(fits: list[HeadFit], S: float, iterations: int = 30):
    """Gauss-Newton over all pairs of one key direction: shared gammas, one logit per head and pair.

    Returns (gamma (H,), logits (pairs, H), largest relative misfit, error bound of the parameters).
    """
    H, P = fits[0].gamma.size, len(fits)
    gamma = np.mean([f.gamma for f in fits], axis=0)
    logits = np.array([f.s for f in fits])
    data = [_data(f) for f in fits]
    log_t = [np.log(t) for t, _ in data]
    rows = sum(t.size for t, _ in data) + 1
    scale = max(abs(S), max(float(np.max(np.abs(F))) for _, F in data))

    def residuals_and_jacobian():
        res = np.empty(rows)
        jac = np.zeros((rows, H + P * H))
        r = 0
        for p, f in enumerate(fits):
            sig = expit(logits[p][None, :] + log_t[p][:, None])
            k = f.t.size
            res[r : r + k] = sig @ gamma - f.F
            jac[r : r + k, :H] = sig
            jac[r : r + k, H + p * H : H + (p + 1) * H] = sig * (1 - sig) * gamma[None, :]
            r += k
        res[r] = gamma.sum() - S
        jac[r, :H] = 1.0
        return res, jac

    structured = P >= STRUCTURED_PAIRS
    for _ in range(iterations):
        step = None
        if structured:
            G, D, r = _blocks(gamma, logits, log_t, data)
            step = _arrow_step(G, D, r, float(gamma.sum() - S))
        if step is None:
            res, jac = residuals_and_jacobian()
            step = np.linalg.lstsq(jac, -res, rcond=None)[0]
        gamma = gamma + step[:H]
        logits = logits + step[H:].reshape(P, H)
        if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(logits)), np.max(np.abs(gamma))):
            break
    if structured:
        G, D, r = _blocks(gamma, logits, log_t, data)
        misfit = max(max(float(np.max(np.abs(x))) for x in r), abs(gamma.sum() - S))
        smallest = _arrow_smallest_singular(G, D)
        if smallest is not None:
            bound = float(np.inf) if smallest == 0 else 1e-16 * scale * np.sqrt(rows) / smallest
            return gamma, logits, misfit / scale, float(bound)
    res, jac = residuals_and_jacobian()
    return gamma, logits, float(np.max(np.abs(res))) / scale, error_bound(jac, scale)


# From this many pairs on, joint_polish solves its Gauss-Newton steps by eliminating each pair's
# logits (an H x H block) instead of one dense least-squares over H + P H unknowns: a direction
# read in full has d pairs, and the dense solve cost O(d^3) per step (at d = 384 it was most of
# the run's time).
STRUCTURED_PAIRS = 32


def _blocks(
    gamma, logits, log_t, data
) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
    """Per pair: d residual / d gamma (k, H), d residual / d logits (k, H), residuals (k,)."""
    G, D, r = [], [], []
    for p, (lt, (_, F)) in enumerate(zip(log_t, data)):
        sig = expit(logits[p][None, :] + lt[:, None])
        G.append(sig)
        D.append(sig * (1 - sig) * gamma[None, :])
        r.append(sig @ gamma - F)
    return G, D, r


def _arrow_step(G, D, r, sum_residual: float) -> np.ndarray | None:
    """The least-squares Gauss-Newton step (gamma, logits of every pair), or None if degenerate.

    Each pair's rows are rotated by the Q of its logit block D_p = Q_p R_p: the first H rotated
    rows are solved exactly by that pair's logits (R_p is H x H), the rest involve gamma only.
    Orthogonal rotations keep the least-squares problem (and its conditioning) the same.
    """
    H = G[0].shape[1]
    P = len(G)
    reduced_rows, reduced_rhs = [np.ones((1, H))], [np.array([sum_residual])]
    tops: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for p in range(P):
        if G[p].shape[0] < H:
            return None
        Q, R = np.linalg.qr(D[p], mode="complete")
        QtG, Qtr = Q.T @ G[p], Q.T @ r[p]
        diagonal = np.abs(np.diag(R[:H]))
        if diagonal.min() <= 1e-13 * max(diagonal.max(), 1e-300):
            return None  # a logit this pair cannot pin down: the dense solve handles it
        tops.append((R[:H], QtG[:H], Qtr[:H]))
        reduced_rows.append(QtG[H:])
        reduced_rhs.append(Qtr[H:])
    dg = np.linalg.lstsq(np.vstack(reduced_rows), -np.concatenate(reduced_rhs), rcond=None)[0]
    steps = [np.linalg.solve(R, -(Qtr + QtG @ dg)) for R, QtG, Qtr in tops]
    return np.concatenate([dg, *steps])


def _arrow_smallest_singular(G, D) -> float | None:
    """The smallest singular value of the joint Jacobian, from its block-arrow normal matrix.

    J^T J has a dense H x H corner (the gammas), one H x H block per pair and nothing between
    pairs, so (J^T J)^-1 applies in O(P H^3) by the Schur complement; Lanczos finds its largest
    eigenvalue 1 / sigma_min^2. Squaring costs digits of sigma_min itself, not the bound's order
    of magnitude: within 0.1% of the dense SVD at bounds up to 3e-7, 9% low at 1.4e-6 (condition
    ~1e10; tests/test_multihead_joint_polish.py). None if a block is singular.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh

    H, P = G[0].shape[1], len(G)
    Gs, Ds = G, D
    corner = sum(g.T @ g for g in Gs) + np.ones((H, H))
    C = np.array([g.T @ dd for g, dd in zip(Gs, Ds)])  # (P, H, H)
    E = np.array([dd.T @ dd for dd in Ds])
    try:
        X = np.linalg.solve(E, np.swapaxes(C, 1, 2))  # E_p^-1 C_p^T
        schur = corner - np.einsum("pij,pjk->ik", C, X)
        np.linalg.cholesky(schur)
    except np.linalg.LinAlgError:
        return None

    def apply_inverse(y):
        y = np.asarray(y, dtype=np.float64).ravel()
        y0, yp = y[:H], y[H:].reshape(P, H)
        z = np.linalg.solve(E, yp[..., None])[..., 0]
        x0 = np.linalg.solve(schur, y0 - np.einsum("pij,pj->i", C, z))
        return np.concatenate([x0, (z - X @ x0).ravel()])

    n = H + P * H
    operator = LinearOperator((n, n), matvec=apply_inverse, dtype=np.float64)
    try:
        largest = float(eigsh(operator, k=1, which="LA", tol=1e-6, return_eigenvectors=False)[0])
    except Exception:  # noqa: BLE001 (ARPACK's failure to converge: fall back to the dense SVD)
        return None
    return float(1 / np.sqrt(largest)) if largest > 0 else None


def error_bound(jac: np.ndarray, scale: float) -> float:
    """How far rounding-level (1e-16 relative) errors in the answers can move the fitted parameters."""
    smallest = np.linalg.svd(jac, compute_uv=False)[-1] if jac.size else 1.0
    return (
        float(np.inf) if smallest == 0 else float(1e-16 * scale * np.sqrt(jac.shape[0]) / smallest)
    )


def logit_jacobian(gamma: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    sig = expit(s[None, :] + np.log(t)[:, None])
    return sig * (1 - sig) * gamma[None, :]


def room(logits: np.ndarray) -> float:
    """How far the logits of a pair can move before two poles meet or a softmax saturates."""
    return min(min_gap(logits), SATURATION - float(np.max(np.abs(logits))))


def min_gap(values: np.ndarray) -> float:
    return float(np.min(np.diff(np.sort(values)))) if values.size > 1 else float("inf")


def separated(values: np.ndarray, gap: float) -> bool:
    return min_gap(values) >= gap


def hold_gammas(fit: HeadFit, t, F, gamma: np.ndarray, iterations: int = 30) -> HeadFit:
    """Gauss-Newton on the logits alone, with the gammas held at `gamma` (heads in its order)."""
    s, log_t = fit.s.copy(), np.log(t)
    for _ in range(iterations):
        sig = expit(s[None, :] + log_t[:, None])
        step = np.linalg.lstsq(sig * (1 - sig) * gamma[None, :], F - sig @ gamma, rcond=None)[0]
        s = s + step
        if not np.all(np.isfinite(s)) or np.max(np.abs(step)) <= 1e-15 * max(
            1.0, np.max(np.abs(s))
        ):
            break
    held = HeadFit(gamma, s, 0.0, t, F)
    scale = max(float(np.max(np.abs(F))), abs(float(gamma.sum())))
    held.residual = (
        float(np.max(np.abs(held.model(t) - F))) / scale if np.all(np.isfinite(s)) else np.inf
    )
    return held


def fit_with_known_gammas(t, F, S, gamma: np.ndarray, tol: Tolerances) -> HeadFit | None:
    """The logits of one pair, heads in the order of `gamma` (the direction's known gammas).

    A free rational fit gives starting logits; which of its heads is which is read from its
    gammas when they are clearly matched, else from the data: every order of heads is tried with
    the gammas held fixed, and the order is accepted only if it alone explains the answers (a
    wrong order leaves a misfit of the size of the gamma differences it swaps). So heads whose
    gammas differ by far less than the 25% that a plain gamma matching needs keep their labels.
    """
    H = gamma.size
    fit = fit_heads(t, F, S, H)
    if fit is None:
        return None
    size = np.max(np.abs(gamma))
    cost = np.abs(fit.gamma[:, None] - gamma[None, :]) / size
    rows, cols = linear_sum_assignment(cost)
    gaps = np.abs(gamma[:, None] - gamma[None, :]) / size + np.eye(H)
    order = np.empty(H, dtype=int)
    order[cols] = rows
    if float(cost[rows, cols].max()) <= 0.25 * float(gaps.min()):
        held = hold_gammas(HeadFit(gamma, fit.s[order], 0.0), t, F, gamma)
    else:
        trials = sorted(
            (
                hold_gammas(HeadFit(gamma, fit.s[list(p)], 0.0), t, F, gamma)
                for p in itertools.permutations(range(H))
            ),
            key=lambda h: h.residual,
        )
        if len(trials) > 1 and trials[1].residual < 1e3 * max(trials[0].residual, 1e-15):
            return None  # two orders explain the answers about equally well: the labels are unknown
        held = trials[0]
    s = held.s
    scale = max(float(np.max(np.abs(F))), abs(S))
    if not np.all(np.isfinite(s)) or held.residual > 1e-6 or np.any(np.abs(s) > tol.max_logit):
        return None
    if (
        min_gap(s) < tol.min_gap / 3
        or error_bound(logit_jacobian(gamma, s, t), scale) > tol.logit_tol
    ):
        # two poles so close that the answers barely tell their logits apart (and Gauss-Newton
        # may stall in the valley between them, where the linearised bound is too optimistic)
        return None
    return held


def newton_from(ref: HeadFit, t, F, S, tol: Tolerances) -> HeadFit | None:
    """Solve sum_h gamma_h sigmoid(s_h + log t_k) = F_k (k = 1..H, or more) for s from ref.s.

    Accepted only if it converges and moved the logits by under 0.3 of their smallest gap,
    so the root found is the one continuous with the reference (heads keep their labels).
    """
    gamma, s, log_t = ref.gamma, ref.s.copy(), np.log(t)
    scale = max(float(np.max(np.abs(F))), abs(S))

    def residual(x):
        return expit(x[None, :] + log_t[:, None]) @ gamma - F

    r = residual(s)
    for _ in range(60):
        sig = expit(s[None, :] + log_t[:, None])
        jac = sig * (1 - sig) * gamma[None, :]
        try:  # square: Newton; one answer more (see direction._continue): Gauss-Newton
            step = (
                np.linalg.solve(jac, -r)
                if jac.shape[0] == jac.shape[1]
                else np.linalg.lstsq(jac, -r, rcond=None)[0]
            )
        except np.linalg.LinAlgError:
            return None
        length = 1.0
        while True:  # backtracking keeps Newton from overshooting across a flat sigmoid
            trial = s + length * step
            r_trial = residual(trial)
            if np.linalg.norm(r_trial) < np.linalg.norm(r) or length < 1e-6:
                break
            length /= 2
        s, r = trial, r_trial
        if np.max(np.abs(length * step)) <= 1e-15 * max(1.0, np.max(np.abs(s))):
            break
    if (
        not np.all(np.isfinite(s))
        or np.max(np.abs(r)) > tol.fit_tol * scale
        or np.any(np.abs(s) > tol.max_logit)
    ):
        return None
    if s.size > 1 and np.max(np.abs(s - ref.s)) > 0.3 * min_gap(s):
        return None
    if (
        min_gap(s) < tol.min_gap / 3
        or error_bound(logit_jacobian(gamma, s, t), scale) > tol.logit_tol
    ):
        return None
    return HeadFit(gamma, s, float(np.max(np.abs(r))) / scale, t, F)
