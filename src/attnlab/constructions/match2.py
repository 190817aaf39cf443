"""Match2 with one standard attention unit: query/key/value width 2, plus a residual readout.

Match2 (attnlab.tasks.match): output_i = 1 iff some j in [N] (j = i allowed) has
x_i + x_j = 0 (mod M).

- query Q(x_i) = beta (cos theta_i, sin theta_i), key K(x_j) = (cos theta_j, -sin theta_j), so the
  logit is beta cos(theta_i + theta_j): beta for a partner, at most beta cos(2 pi / M) otherwise;
- value V(x_j) = (cos theta_j, sin theta_j): the output is (nearly) the unit vector of the best
  partner;
- output map psi (sees the token's own x_i, a residual): 1 iff
  <output, (cos theta_i, -sin theta_i)> > (1 + cos(2 pi / M)) / 2.
beta = (ln N + ln(8 / (1 - c))) / (1 - c), c = cos(2 pi / M), of order M^2 log(N M).

The width is m = 2, one less than the m = 3 quoted for the paper: the readout needs x_i, which
the residual supplies (the reference notes could not confirm how the paper's third coordinate is
used; with psi seeing the token, 2 suffice). Precision p rounds every produced number; the search
in `smallest_match_precision` finds the p the construction needs (order 2 log2 M).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attnlab.constructions.match_common import AngleMatchConstruction, angles, readout_threshold
from attnlab.constructions.verification import smallest_passing
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer


class Match2Construction(AngleMatchConstruction):
    """One unit, width 2, residual readout; verified by `verify`."""

    task_name = "match2"
    order = 2
    width = 2

    def model(self) -> MultiHeadAttentionLayer:
        M, beta, threshold = self.M, self.beta, readout_threshold(self.M)

        def query(x: torch.Tensor) -> torch.Tensor:
            cos, sin = angles(x[..., 0], M)
            return beta * torch.stack([cos, sin], dim=-1)

        def key(x: torch.Tensor) -> torch.Tensor:
            cos, sin = angles(x[..., 0], M)
            return torch.stack([cos, -sin], dim=-1)

        def value(x: torch.Tensor) -> torch.Tensor:
            cos, sin = angles(x[..., 0], M)
            return torch.stack([cos, sin], dim=-1)

        def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            own = key(tokens)  # (cos theta_i, -sin theta_i)
            return ((attended * own).sum(dim=-1) > threshold).to(attended.dtype)

        head = AttentionUnit(query, key, value, precision=self.precision)
        return MultiHeadAttentionLayer([head], output_map=readout, precision=self.precision)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tokens = torch.from_numpy(np.asarray(inputs["x"], dtype=np.float64)[..., None])
        with torch.no_grad():
            return self.model()(tokens).numpy().astype(np.int8)


def smallest_match_precision(build: Callable[[int | None], Any], rng_seed: int = 0, n: int = 16,
                             limit: int = 53):
    """The construction build(p) at the smallest p whose verification has no wrong bit (p >= 53
    is float64 itself). Every candidate p is verified on the same sampled and near-miss inputs."""

    def errors_at(bits: int) -> float:
        return float(build(bits).verify(rng=np.random.default_rng(rng_seed), n=n).bit_errors)

    bits, history = smallest_passing(errors_at, 0.0, start=2, limit=limit, what="precision p")
    found = build(bits)
    found.search = history
    return found
