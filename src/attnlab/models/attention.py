"""Single-head softmax-attention regressors, the targets of Part A.

Both read the last token x_N as the attention query and return one number per sequence:

    SingleHeadAttention:  f(X) = softmax(X W x_N)^T X v
    AffineHead:           scores x_i^T W x_N + u^T x_i,  values v^T x_i + c

Inputs are batches of shape (B, N, d); outputs have shape (B,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnlab._random import Seed, as_generator


def random_low_rank(d: int, rank: int | None, scale: float, rng: np.random.Generator) -> np.ndarray:
    """A d x d matrix of the given rank whose entries have standard deviation `scale`."""
    if rank is None or rank >= d:
        return scale * rng.standard_normal((d, d))
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    left = rng.standard_normal((d, rank))
    right = rng.standard_normal((d, rank))
    return scale * (left @ right.T) / np.sqrt(rank)


def _as_batch(X: torch.Tensor) -> torch.Tensor:
    if X.ndim != 3:
        raise ValueError(f"expected a batch of shape (B, N, d), got shape {tuple(X.shape)}")
    return X


class SingleHeadAttention(nn.Module):
    """f(X) = softmax(X W x_N)^T X v, with W = K^T Q merged and v = V^T w_o merged."""

    def __init__(
        self, W: torch.Tensor | np.ndarray, v: torch.Tensor | np.ndarray, dtype=torch.float64
    ):
        super().__init__()
        W = torch.as_tensor(W, dtype=dtype)
        v = torch.as_tensor(v, dtype=dtype)
        d = v.shape[0]
        if W.shape != (d, d):
            raise ValueError(
                f"W must have shape ({d}, {d}) to match v of length {d}, got {tuple(W.shape)}"
            )
        self.W = nn.Parameter(W)
        self.v = nn.Parameter(v)

    @property
    def d(self) -> int:
        return self.v.shape[0]

    @classmethod
    def random(
        cls,
        d: int,
        rank: int | None = None,
        scale: float = 1.0,
        seed: Seed = 0,
        dtype=torch.float64,
    ) -> SingleHeadAttention:
        """A random head: W of the given rank with entry scale `scale`, v standard normal."""
        rng = as_generator(seed)
        W = random_low_rank(d, rank, scale, rng)
        v = rng.standard_normal(d)
        return cls(W, v, dtype=dtype)

    def scores(self, X: torch.Tensor) -> torch.Tensor:
        X = _as_batch(X)
        return torch.einsum("bnd,de,be->bn", X, self.W, X[:, -1, :])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _as_batch(X)
        weights = torch.softmax(self.scores(X), dim=-1)
        return torch.einsum("bn,bn->b", weights, X @ self.v)


class AffineHead(nn.Module):
    """Attention with biases: scores x_i^T W x_N + u^T x_i, values v^T x_i + c.

    Query-side biases add the same amount to every score and cancel in the softmax, so
    (W, u, v, c) is all a black box can reveal.
    """

    def __init__(self, W, u, v, c, dtype=torch.float64):
        super().__init__()
        v = torch.as_tensor(v, dtype=dtype)
        d = v.shape[0]
        W = torch.as_tensor(W, dtype=dtype)
        u = torch.as_tensor(u, dtype=dtype)
        if W.shape != (d, d) or u.shape != (d,):
            raise ValueError(
                f"expected W ({d}, {d}) and u ({d},), got {tuple(W.shape)} and {tuple(u.shape)}"
            )
        self.W = nn.Parameter(W)
        self.u = nn.Parameter(u)
        self.v = nn.Parameter(v)
        self.c = nn.Parameter(torch.as_tensor(float(c), dtype=dtype))

    @property
    def d(self) -> int:
        return self.v.shape[0]

    @classmethod
    def random(
        cls,
        d: int,
        rank: int | None = None,
        scale: float = 1.0,
        seed: Seed = 0,
        dtype=torch.float64,
    ) -> AffineHead:
        rng = as_generator(seed)
        W = random_low_rank(d, rank, scale, rng)
        u = scale * rng.standard_normal(d)
        v = rng.standard_normal(d)
        c = float(rng.standard_normal())
        return cls(W, u, v, c, dtype=dtype)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        X = _as_batch(X)
        scores = torch.einsum("bnd,de,be->bn", X, self.W, X[:, -1, :]) + X @ self.u
        weights = torch.softmax(scores, dim=-1)
        return torch.einsum("bn,bn->b", weights, X @ self.v) + self.c
