"""One-hidden-layer ReLU networks g(x) = w^T ReLU(A^T x + b) + c, the FFN targets of extraction.

As an Oracle target a vector x is sent as a one-token sequence: forward takes (B, d) or
(B, 1, d) and returns (B,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnlab._random import as_generator


class ReluFFN(nn.Module):
    """g(x) = w^T ReLU(A^T x + b) + c with A in R^{d x m}; `b=None` and `c=0` give the bias-free net."""

    def __init__(self, A, w, b=None, c: float = 0.0, dtype=torch.float64):
        super().__init__()
        A = torch.as_tensor(A, dtype=dtype)
        w = torch.as_tensor(w, dtype=dtype)
        if A.ndim != 2 or w.shape != (A.shape[1],):
            raise ValueError(
                f"A must be (d, m) and w (m,); got A {tuple(A.shape)} and w {tuple(w.shape)}"
            )
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
    def random(
        cls,
        d: int,
        m: int,
        bias: bool = True,
        seed: int | np.random.Generator | None = 0,
        dtype=torch.float64,
        *,
        init: str = "gaussian",
        dead: float = 0.0,
        far: int = 0,
    ) -> ReluFFN:
        """Random weights.

        init="gaussian": A entries N(0, 1/d), w N(0, 1/m), b and c N(0, 1) when `bias`.
        init="he" (Kaiming normal, as a freshly initialised layer): A entries N(0, 2/d), w N(0, 2/m),
        b and c uniform in +-1/sqrt(d) (PyTorch's nn.Linear bias init) when `bias`.
        dead: fraction of neurons made dead (half with w_j = 0, half with a_j = 0 and b_j < 0):
        no query can see them. far: that many neurons (with bias) get hyperplanes at distance
        50..200 from the origin (b_j = -+ distance * ||a_j||), alive only far from the data.
        """
        if init not in ("gaussian", "he"):
            raise ValueError(f"init must be 'gaussian' or 'he', got {init!r}")
        if not 0.0 <= dead <= 1.0:
            raise ValueError(f"dead must be a fraction in [0, 1], got {dead}")
        if far and not bias:
            raise ValueError("far hyperplanes need biases: pass bias=True with far > 0")
        rng = as_generator(seed)
        gain = 2.0 if init == "he" else 1.0
        A = rng.standard_normal((d, m)) * np.sqrt(gain / d)
        w = rng.standard_normal(m) * np.sqrt(gain / m)
        b, c = None, 0.0
        if bias:
            if init == "he":
                b, c = rng.uniform(-1, 1, m) / np.sqrt(d), float(rng.uniform(-1, 1) / np.sqrt(d))
            else:
                b, c = rng.standard_normal(m), float(rng.standard_normal())
        if far:
            which = rng.choice(m, size=min(far, m), replace=False)
            distance = rng.uniform(50.0, 200.0, which.size) * rng.choice([-1.0, 1.0], which.size)
            b[which] = -distance * np.linalg.norm(A[:, which], axis=0)
        dead_count = int(round(dead * m))
        if dead_count:
            which = rng.choice(m, size=dead_count, replace=False)
            w[which[::2]] = 0.0
            A[:, which[1::2]] = 0.0
            if b is not None:
                b[which[1::2]] = -np.abs(b[which[1::2]]) - 0.1
        return cls(A, w, b, c, dtype=dtype)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.A + self.b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            if x.shape[1] != 1:
                raise ValueError(
                    f"a ReLU FFN reads one vector per query; send one-token sequences (B, 1, d), got {tuple(x.shape)}"
                )
            x = x[:, 0, :]
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(
                f"expected inputs (B, {self.d}) or (B, 1, {self.d}), got {tuple(x.shape)}"
            )
        return self.hidden(x) @ self.w + self.c
