"""The one-layer transformer of Part A: single-head attention followed by a bias-free ReLU FFN.

    T(X) = w_o^T ReLU(A^T z(X)),   z(X) = X^T softmax(X W x_N)   (+ x_N with the residual)

The value matrix is folded into A; the last token x_N is the attention query.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnlab._random import Seed, as_generator
from attnlab.models.attention import random_low_rank
from attnlab.models.ffn import ReluFFN


class OneLayerTransformer(nn.Module):
    """Inputs (B, N, d) -> outputs (B,)."""

    def __init__(self, W, A, w_o, residual: bool = False, dtype=torch.float64):
        super().__init__()
        W = torch.as_tensor(W, dtype=dtype)
        self.ffn = ReluFFN(A, w_o, dtype=dtype)
        d = self.ffn.d
        if W.shape != (d, d):
            raise ValueError(
                f"W must be ({d}, {d}) to match A of shape {tuple(self.ffn.A.shape)}, got {tuple(W.shape)}"
            )
        self.W = nn.Parameter(W)
        self.residual = bool(residual)

    @property
    def d(self) -> int:
        return self.ffn.d

    @property
    def value_vector(self) -> torch.Tensor:
        """A w_o: the value vector of the single head that T(X) - T(-X) equals."""
        return self.ffn.A @ self.ffn.w

    @classmethod
    def random(
        cls,
        d: int,
        m: int,
        rank: int | None = None,
        scale: float = 1.0,
        residual: bool = False,
        seed: Seed = 0,
        dtype=torch.float64,
    ) -> OneLayerTransformer:
        """W of the given rank with entries N(0, scale^2/d), A entries N(0, 1/d), w_o N(0, 1/m)."""
        rng = as_generator(seed)
        W = random_low_rank(d, rank, scale / np.sqrt(d), rng)
        A = rng.standard_normal((d, m)) / np.sqrt(d)
        w_o = rng.standard_normal(m) / np.sqrt(m)
        return cls(W, A, w_o, residual=residual, dtype=dtype)

    def mixed(self, X: torch.Tensor) -> torch.Tensor:
        """z(X): the attention-weighted token (plus x_N with the residual), shape (B, d)."""
        if X.ndim != 3:
            raise ValueError(f"expected a batch of shape (B, N, d), got shape {tuple(X.shape)}")
        query = X[:, -1, :]
        weights = torch.softmax(torch.einsum("bnd,de,be->bn", X, self.W, query), dim=-1)
        z = torch.einsum("bn,bnd->bd", weights, X)
        return z + query if self.residual else z

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.mixed(X))
