"""Which side of each hyperplane is the active one.

Writing every neuron with a guessed orientation leaves a linear term p = -sum_{flipped} w_j a_j
(ReLU(z) = ReLU(-z) + z), measurable from any region's gradient. The flipped set solves
K f = -p over f in {0,1}^m, K's columns being the neurons' w_j a_j: a linear solve when K has
full column rank (m <= d), else a 0/1 program (scipy's HiGHS MILP, within a time limit). This
is a subset-sum problem: for m >> d it may not finish, and the extraction then keeps the linear
term, which represents the same function exactly (the parameters are then a ReLU network plus
a linear term, not the original network's orientation).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp


def resolve_orientation(K: np.ndarray, target: np.ndarray, tol: float, time_limit: float):
    """f in {0,1}^n with K f = target, and how it was found; (None, "unresolved") if not found."""
    n = K.shape[1]
    if n == 0:
        return np.zeros(0, dtype=bool), "exact"
    if np.linalg.matrix_rank(K) == n:
        f = np.linalg.lstsq(K, target, rcond=None)[0]
        rounded = np.round(f)
        if (
            np.all(np.abs(f - rounded) < 1e-4)
            and np.all((rounded == 0) | (rounded == 1))
            and np.max(np.abs(K @ rounded - target)) <= tol
        ):
            return rounded.astype(bool), "linear"
        return None, "unresolved"
    if time_limit <= 0:
        return None, "unresolved"
    result = milp(
        c=np.zeros(n),
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        constraints=[LinearConstraint(K, target - tol, target + tol)],
        options={"time_limit": time_limit, "disp": False},
    )
    if result.x is None:
        return None, "unresolved"
    f = np.round(result.x)
    if np.max(np.abs(K @ f - target)) > 10 * tol:
        return None, "unresolved"
    return f.astype(bool), "milp"
