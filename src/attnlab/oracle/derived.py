"""Derived oracles: an oracle built on another, answering a transformed question.

Every query a derived oracle answers is sent through (and counted by) its parent.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnlab.oracle.oracle import Oracle


# -- subspace oracle (multi-head: orthogonal_heads) ---------------------------------------------
def subspace_oracle(parent: Oracle, basis) -> Oracle:
    """An oracle on subspace coordinates: z-tokens become z @ basis.T, and the parent answers (and counts).

    `basis` is a (d, k) matrix; a query of k-wide tokens Z is answered as parent(Z @ basis.T).
    """
    basis = np.asarray(basis, dtype=np.float64)
    if basis.ndim != 2 or (parent.d is not None and basis.shape[0] != parent.d):
        raise ValueError(f"basis must have shape ({parent.d}, k), got {basis.shape}")
    return Oracle(lambda Z: parent(np.asarray(Z) @ basis.T), d=basis.shape[1])


# -- antisymmetric oracle (one-layer transformer: W from T(X) - T(-X)) -------------------------
def antisymmetric_oracle(
    parent: Oracle, correction: Callable[[np.ndarray], np.ndarray] | None = None
) -> Oracle:
    """The Oracle of D(X) = T(X) - T(-X) (minus correction(X)), asking `parent` for X and -X.

    The derived oracle counts derived queries; the parent counts every real one (2 per derived
    query), applies its noise and enforces its budget.
    """

    def target(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(parent(np.concatenate([X, -X], axis=0)), dtype=np.float64)
        out = y[: X.shape[0]] - y[X.shape[0] :]
        return out - correction(X) if correction is not None else out

    return Oracle(target, d=parent.d)
