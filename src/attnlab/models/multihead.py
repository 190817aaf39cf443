"""Multi-head softmax-attention regressors: f(X) = sum_h softmax(X W_h x_N)^T X v_h.

The last token x_N is every head's attention query. Inputs are batches (B, N, d); outputs (B,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from scipy.stats import ortho_group

from attnlab.models.attention import random_low_rank


def _generator(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


class MultiHeadRegressor(nn.Module):
    """A sum of single-head regressors sharing the query token: heads (W_h, v_h), h = 1..H."""

    def __init__(self, Ws: torch.Tensor | np.ndarray, vs: torch.Tensor | np.ndarray, dtype=torch.float64):
        super().__init__()
        Ws = torch.as_tensor(np.asarray(Ws) if not isinstance(Ws, torch.Tensor) else Ws, dtype=dtype)
        vs = torch.as_tensor(np.asarray(vs) if not isinstance(vs, torch.Tensor) else vs, dtype=dtype)
        if vs.ndim != 2:
            raise ValueError(f"vs must have shape (H, d), got {tuple(vs.shape)}")
        heads, d = vs.shape
        if Ws.shape != (heads, d, d):
            raise ValueError(
                f"Ws must have shape (H, d, d) = ({heads}, {d}, {d}) to match vs of shape ({heads}, {d}), "
                f"got {tuple(Ws.shape)}"
            )
        self.Ws = nn.Parameter(Ws)
        self.vs = nn.Parameter(vs)

    @property
    def d(self) -> int:
        return self.vs.shape[1]

    @property
    def heads(self) -> int:
        return self.vs.shape[0]

    @classmethod
    def random(cls, d: int, heads: int, rank: int | None = None, scale: float = 1.0,
               seed: int | np.random.Generator | None = 0, dtype=torch.float64) -> "MultiHeadRegressor":
        """Independent random heads: each W_h of the given rank with entry scale `scale`, v_h standard normal."""
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        rng = _generator(seed)
        Ws = np.stack([random_low_rank(d, rank, scale, rng) for _ in range(heads)])
        vs = rng.standard_normal((heads, d))
        return cls(Ws, vs, dtype=dtype)

    def scores(self, X: torch.Tensor) -> torch.Tensor:
        """Attention scores of every head, shape (B, H, N)."""
        if X.ndim != 3:
            raise ValueError(f"expected a batch of shape (B, N, d), got shape {tuple(X.shape)}")
        return torch.einsum("bnd,hde,be->bhn", X, self.Ws, X[:, -1, :])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.scores(X), dim=-1)
        values = torch.einsum("bnd,hd->bhn", X, self.vs)
        return (weights * values).sum(dim=(1, 2))


def random_orthogonal_heads(d: int, dims: list[int] | tuple[int, ...], scale: float = 1.0,
                            seed: int | np.random.Generator | None = 0,
                            dtype=torch.float64) -> tuple[MultiHeadRegressor, list[np.ndarray]]:
    """Heads living in pairwise orthogonal subspaces of R^d, and those subspaces' bases.

    Head h acts only inside span(bases[h]) (a (d, dims[h]) matrix with orthonormal columns):
    W_h = B_h M_h B_h^T and v_h = B_h m_h with M_h, m_h random.
    """
    dims = [int(k) for k in dims]
    if any(k < 1 for k in dims) or sum(dims) > d:
        raise ValueError(f"subspace dimensions must be >= 1 and sum to at most d = {d}; got {dims}")
    rng = _generator(seed)
    frame = ortho_group.rvs(d, random_state=rng) if d > 1 else np.ones((1, 1))
    bases, Ws, vs, start = [], [], [], 0
    for k in dims:
        basis = frame[:, start:start + k]
        start += k
        bases.append(basis)
        Ws.append(basis @ (scale * rng.standard_normal((k, k))) @ basis.T)
        vs.append(basis @ rng.standard_normal(k))
    return MultiHeadRegressor(np.stack(Ws), np.stack(vs), dtype=dtype), bases
