"""Match3 with one third-order attention unit of width 4 (trilinear logits, Hadamard values).

Match3 (attnlab.tasks.match): output_i = 1 iff some j1, j2 in [N] (j1 = j2 allowed, either may
equal i) have x_i + x_j1 + x_j2 = 0 (mod M). Standard one-layer attention needs m p H of order N
for this (Theorem 7); third-order attention (attnlab.models.third_order: softmax over all pairs
(j1, j2) of sum_l Q_il K1_{j1 l} K2_{j2 l}, values V1_{j1} * V2_{j2}) solves it at width 4, from
cos(a+b+c) = ca cb cc - ca sb sc - sa cb sc - sa sb cc (a, b, c the angles of x_i, x_j1, x_j2):

    Q  = beta (cos a, -cos a, -sin a, -sin a)
    K1 = V1 = (cos b, sin b, cos b, sin b)
    K2 = V2 = (cos c, sin c, sin c, cos c)

so the logit is beta cos(a + b + c), and from the output h = sum w V1 * V2 the readout takes
(h1 - h2, h3 + h4) = (cos(b+c), sin(b+c)) averaged over the best pairs, and outputs 1 iff its
inner product with (cos a, -sin a) exceeds (1 + cos(2 pi / M)) / 2 (psi sees x_i: a residual).
beta = (ln N^2 + ln(8 / (1 - c))) / (1 - c) over the N^2 candidate pairs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.constructions.match_common import (
    angles,
    check_modulus,
    match_temperature,
    readout_threshold,
    verify_match,
)
from attnlab.constructions.verification import Verification
from attnlab.models.precision import round_to_bits
from attnlab.models.third_order import third_order_attention
from attnlab.tasks import Match3


@dataclass
class ThirdOrderMatch3:
    """One third-order unit of width 4 with a residual readout; verified by `verify`."""

    N: int
    M: int
    precision: int | None = None
    beta: float = 0.0
    search: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(cls, N: int, M: int, precision: int | None = None, beta: float | None = None) -> "ThirdOrderMatch3":
        Match3(N, check_modulus(M))
        beta = match_temperature(M, N * N) if beta is None else float(beta)
        return cls(int(N), int(M), precision, beta)

    @property
    def m(self) -> int:
        return 4

    @property
    def heads(self) -> int:
        return 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bits (B, N) for residues x (B, N) (float64)."""
        cos, sin = angles(x, self.M)
        query = self.beta * torch.stack([cos, -cos, -sin, -sin], dim=-1)
        first = torch.stack([cos, sin, cos, sin], dim=-1)
        second = torch.stack([cos, sin, sin, cos], dim=-1)
        attended = third_order_attention(query, first, second, first, second, precision=self.precision)
        pair_cos = round_to_bits(attended[..., 0] - attended[..., 1], self.precision)
        pair_sin = round_to_bits(attended[..., 2] + attended[..., 3], self.precision)
        own_cos, own_sin = round_to_bits(cos, self.precision), round_to_bits(sin, self.precision)
        score = round_to_bits(pair_cos * own_cos - pair_sin * own_sin, self.precision)
        return (score > readout_threshold(self.M)).to(torch.int8)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.forward(torch.from_numpy(np.asarray(inputs["x"], dtype=np.float64))).numpy()

    def task(self) -> Match3:
        return Match3(self.N, self.M)

    def verify(self, task: Match3 | None = None, rng=0, n: int = 16) -> Verification:
        task = self.task() if task is None else task
        if (task.N, task.M) != (self.N, self.M) or task.name != "match3":
            raise ValueError(f"this construction is for match3 N={self.N}, M={self.M}, not {task!r}")
        return verify_match(task, self.predict, rng, n, order=3)

    def to_dict(self) -> dict[str, Any]:
        return {"task": "match3", "attention": "third-order", "N": self.N, "M": self.M, "m": self.m,
                "heads": self.heads, "p": self.precision, "beta": self.beta, "residual": True,
                "search": {str(k): v for k, v in sorted(self.search.items())}}
