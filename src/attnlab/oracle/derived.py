"""Derived oracles: an oracle built on another, answering a transformed question.

Every query a derived oracle answers is sent through (and counted by) its parent.
"""

from __future__ import annotations

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
