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

import numpy as np
import torch

from attnlab.constructions.match_common import AngleMatchConstruction, angles, readout_threshold
from attnlab.models.precision import round_to_bits
from attnlab.models.third_order import third_order_attention


class ThirdOrderMatch3(AngleMatchConstruction):
    """One third-order unit of width 4 with a residual readout; verified by `verify`."""

    task_name = "match3"
    order = 3
    width = 4
    attention = "third-order"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Bits (B, N) for residues x (B, N) (float64)."""
        cos, sin = angles(x, self.M)
        query = self.beta * torch.stack([cos, -cos, -sin, -sin], dim=-1)
        first = torch.stack([cos, sin, cos, sin], dim=-1)
        second = torch.stack([cos, sin, sin, cos], dim=-1)
        attended = third_order_attention(
            query, first, second, first, second, precision=self.precision
        )
        pair_cos = round_to_bits(attended[..., 0] - attended[..., 1], self.precision)
        pair_sin = round_to_bits(attended[..., 2] + attended[..., 3], self.precision)
        own_cos, own_sin = round_to_bits(cos, self.precision), round_to_bits(sin, self.precision)
        score = round_to_bits(pair_cos * own_cos - pair_sin * own_sin, self.precision)
        return (score > readout_threshold(self.M)).to(torch.int8)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        with torch.no_grad():
            return self.forward(torch.from_numpy(np.asarray(inputs["x"], dtype=np.float64))).numpy()
