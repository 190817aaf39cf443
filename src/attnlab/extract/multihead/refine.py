"""A final joint least-squares polish of every parameter against every answer the learner kept.

The learner reads each probe pair on its own and then solves linear systems; an ill-conditioned
pair (crowded poles, a head with a small value vector) passes its error straight into the
parameters. All answers together overdetermine the canonical parameters (queries are 1.1-4x the
free parameters), so Gauss-Newton on sum_k (f_theta(X_k) - y_k)^2, started at the learner's
estimate, averages such errors out. A step is kept only if it lowers the misfit.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax

from attnlab.models.canonical import MultiHeadParams
from attnlab.oracle.sampling import group_by_length

MAX_PARAMETERS = 4000  # the dense Jacobian is (queries x parameters)


def _rows(params: MultiHeadParams, X: np.ndarray, affine: bool) -> tuple[np.ndarray, np.ndarray]:
    """Predictions on a batch (B, N, d) and their Jacobian (B, parameters) in the order of `pack`."""
    q = X[:, -1, :]
    assert params.u is not None  # MultiHeadParams.__post_init__ fills u (zeros without biases)
    z = np.einsum("bnd,hde,be->bhn", X, params.W, q) + np.einsum("bnd,hd->bhn", X, params.u)
    alpha = softmax(z, axis=-1)
    g = np.einsum("bnd,hd->bhn", X, params.v)
    f_h = np.sum(alpha * g, axis=-1)
    pred = params.c + f_h.sum(axis=1)
    weight = alpha * (g - f_h[..., None])
    dz = np.einsum("bhn,bnd->bhd", weight, X)  # d f / d u_h; d f / d W_h = dz_h q^T
    dW = np.einsum("bhd,be->bhde", dz, q).reshape(X.shape[0], -1)
    dv = np.einsum("bhn,bnd->bhd", alpha, X).reshape(X.shape[0], -1)
    parts = [dW, dv]
    if affine:
        parts += [dz.reshape(X.shape[0], -1), np.ones((X.shape[0], 1))]
    return pred, np.hstack(parts)


def pack(params: MultiHeadParams, affine: bool) -> np.ndarray:
    parts = [params.W.ravel(), params.v.ravel()]
    if affine:
        assert params.u is not None  # MultiHeadParams.__post_init__ fills u
        parts += [params.u.ravel(), np.array([params.c])]
    return np.concatenate(parts)


def unpack(theta: np.ndarray, H: int, d: int, affine: bool) -> MultiHeadParams:
    W = theta[: H * d * d].reshape(H, d, d)
    v = theta[H * d * d : H * d * d + H * d].reshape(H, d)
    if not affine:
        return MultiHeadParams(W, v)
    rest = theta[H * d * d + H * d :]
    return MultiHeadParams(W, v, rest[: H * d].reshape(H, d), float(rest[-1]))


def refine(
    params: MultiHeadParams,
    sequences: list[np.ndarray],
    answers: np.ndarray,
    affine: bool,
    iterations: int = 4,
) -> tuple[MultiHeadParams, dict]:
    """Gauss-Newton from `params` on the kept answers; returns the polished params and a summary."""
    H, d = params.heads, params.d
    theta = pack(params, affine)
    if H == 0 or theta.size > MAX_PARAMETERS or len(sequences) < theta.size:
        return params, {"refined": False}
    groups = group_by_length(sequences)
    y = np.asarray(answers, dtype=np.float64)

    def misfit_and_jacobian(current: MultiHeadParams, with_jacobian: bool = True):
        residual = np.empty(y.size)
        jac = np.empty((y.size, theta.size)) if with_jacobian else None
        for index, batch in groups:
            pred, rows = _rows(current, batch, affine)
            residual[index] = pred - y[index]
            if jac is not None:  # with_jacobian
                jac[index] = rows
        return residual, jac

    residual, jac = misfit_and_jacobian(params)
    start = best = float(np.max(np.abs(residual)))
    for _ in range(iterations):
        step = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        trial = unpack(theta + step, H, d, affine)
        trial_residual, trial_jac = misfit_and_jacobian(trial)
        worst = float(np.max(np.abs(trial_residual)))
        if not np.isfinite(worst) or worst >= best:
            break
        theta, params, residual, jac, best = theta + step, trial, trial_residual, trial_jac, worst
    return params, {"refined": True, "misfit_before": start, "misfit_after": best}
