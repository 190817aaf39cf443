"""One-hidden-layer ReLU networks g(x) = w^T ReLU(A^T x + b) + c, the FFN targets of extraction.

As an Oracle target a vector x is sent as a one-token sequence: forward takes (B, d) or
(B, 1, d) and returns (B,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ReluFFN(nn.Module):
    """g(x) = w^T ReLU(A^T x + b) + c with A in R^{d x m}; `b=None` and `c=0` give the bias-free net."""

    def __init__(self, A, w, b=None, c: float = 0.0, dtype=torch.float64):
        super().__init__()
        A = torch.as_tensor(A, dtype=dtype)
        w = torch.as_tensor(w, dtype=dtype)
        if A.ndim != 2 or w.shape != (A.shape[1],):
            raise ValueError(f"A must be (d, m) and w (m,); got A {tuple(A.shape)} and w {tuple(w.shape)}")
        self.A = nn.Parameter(A)
        self.w = nn.Parameter(w)
        self.has_bias = b is not None
        b = torch.zeros(A.shape[1], dtype=dtype) if b is None else torch.as_tensor(b, dtype=dtype)
        if b.shape != (A.shape[1],):
            raise ValueError(f"b must have shape ({A.shape[1]},), got {tuple(b.shape)}")
        self.b = nn.Parameter(b, requires_grad=self.has_bias)
        self.c = nn.Parameter(torch.as_tensor(float(c), dtype=dtype), requires_grad=self.has_bias)

    @property
    def d(self) -> int:
        return self.A.shape[0]

    @property
    def m(self) -> int:
        return self.A.shape[1]

    @classmethod
    def random(cls, d: int, m: int, bias: bool = True, seed: int | np.random.Generator | None = 0,
               dtype=torch.float64) -> "ReluFFN":
        """Random weights: A entries N(0, 1/d), w N(0, 1/m), b and c N(0, 1) when `bias`."""
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
        A = rng.standard_normal((d, m)) / np.sqrt(d)
        w = rng.standard_normal(m) / np.sqrt(m)
        if not bias:
            return cls(A, w, dtype=dtype)
        return cls(A, w, rng.standard_normal(m), float(rng.standard_normal()), dtype=dtype)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.A + self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            if x.shape[1] != 1:
                raise ValueError(
                    f"a ReLU FFN reads one vector per query; send one-token sequences (B, 1, d), got {tuple(x.shape)}")
            x = x[:, 0, :]
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"expected inputs (B, {self.d}) or (B, 1, {self.d}), got {tuple(x.shape)}")
        return self.hidden(x) @ self.w + self.c
