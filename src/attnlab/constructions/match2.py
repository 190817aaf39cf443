"""Match2 with one standard attention unit: width 3 and no residual, or width 2 plus a residual.

Match2 (attnlab.tasks.match): output_i = 1 iff some j in [N] (j = i allowed) has
x_i + x_j = 0 (mod M).

`Match2WidthThree` (the paper's m = 3; psi sees only the attention output, no residual), with
t = 2 pi x / M, c = cos t, s = sin t, f = [2x = 0 mod M]:
- phi(x) = (c, s, f) = V; query beta (2 c_i, 1, 0), key (c_j, -c_j^2, 0), so the logit is
  beta (c_i^2 - (c_i - c_j)^2): largest, all equal, exactly at the tokens with x_j = +-x_i
  (token i itself among them), lower by at least beta * gap otherwise, gap = the smallest
  nonzero (c_a - c_b)^2 over residues (about 4 pi^4 / M^4);
- the output is then (c_i, s_i (n+ - n-) / (n+ + n-), f_i) up to the leak, n+ >= 1 and n- the
  counts of x_i and -x_i. psi: 1 if the third coordinate > 1/2 (2 x_i = 0: i is its own
  partner), else 1 iff r = s_out^2 / (1 - c_out^2) < ((1 + ((N - 2)/N)^2) / 2): r = 1 without
  a partner and r <= ((N - 2)/N)^2 with one.
beta = ln(20 (N - 1) / (delta * margin)) / gap, delta = the smallest s^2 of an unflagged residue,
margin = (1 - ((N - 2)/N)^2) / 4, so the leak moves r by less than the margin. The logit gap is
of order M^-4, so this variant needs about 4 log2 M + log2 log N bits (measured by the search).

`Match2Construction` (width 2 plus a residual, kept for comparison):
- query Q(x_i) = beta (cos theta_i, sin theta_i), key K(x_j) = (cos theta_j, -sin theta_j), so the
  logit is beta cos(theta_i + theta_j): beta for a partner, at most beta cos(2 pi / M) otherwise;
- value V(x_j) = (cos theta_j, sin theta_j): the output is (nearly) the unit vector of the best
  partner;
- output map psi (sees the token's own x_i, a residual): 1 iff
  <output, (cos theta_i, -sin theta_i)> > (1 + cos(2 pi / M)) / 2.
beta = (ln N + ln(8 / (1 - c))) / (1 - c), c = cos(2 pi / M), of order M^2 log(N M).

Counted honestly, its width is 2 attention coordinates plus 1 residual number (x_i) handed to
psi outside the attention: `to_dict` reports m = 2, residual = True, residual_inputs = 1.
Precision p rounds every produced number; the search in `smallest_match_precision` finds the p
each construction needs (order 2 log2 M here).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from attnlab.constructions.match_common import (
    AngleMatchConstruction,
    angles,
    readout_threshold,
    verify_match,
)
from attnlab.constructions.verification import matching_task, merge_scores, smallest_passing
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.tasks import Batch, as_generator


class Match2Construction(AngleMatchConstruction):
    """One unit, width 2, residual readout (psi sees x_i); verified by `verify`."""

    task_name = "match2"
    order = 2
    width = 2
    residual_inputs = 1

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


def _symmetric_angles(x: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos t, sin t), t = 2 pi x / M, with cos computed from min(x, M - x) so that x and -x get
    bit-identical cosines (their logits must tie exactly)."""
    x = torch.remainder(x, M)
    folded = torch.minimum(x, M - x)
    cos = torch.cos(2.0 * math.pi * folded / M)
    sin = torch.sin(2.0 * math.pi * folded / M) * torch.where(x <= M - x, 1.0, -1.0).to(x.dtype)
    return cos, sin


def cosine_gap(M: int) -> float:
    """The smallest nonzero (cos t_a - cos t_b)^2 over residues a, b."""
    cos, _ = _symmetric_angles(torch.arange(M, dtype=torch.float64), M)
    distinct = torch.unique(cos)
    return float(torch.diff(distinct).min() ** 2) if len(distinct) > 1 else 1.0


def smallest_unflagged_sine(M: int) -> float:
    """The smallest sin^2 t over residues with 2x != 0 mod M."""
    x = torch.arange(M, dtype=torch.float64)
    _, sin = _symmetric_angles(x, M)
    unflagged = (2 * torch.arange(M)) % M != 0
    return float((sin[unflagged] ** 2).min()) if bool(unflagged.any()) else 1.0


def ratio_threshold(N: int) -> float:
    matched = ((N - 2) / N) ** 2 if N >= 2 else 0.0
    return 0.5 * (1.0 + matched)


class Match2WidthThree(AngleMatchConstruction):
    """One unit of width 3 and no residual: psi sees only the attention output (module doc)."""

    task_name = "match2"
    order = 2
    width = 3
    residual_inputs = 0

    @classmethod
    def build(cls, N: int, M: int, precision: int | None = None, beta: float | None = None):
        construction = super().build(N, M, precision, 1.0 if beta is None else beta)
        if beta is None:
            margin = (1.0 - ((N - 2) / N) ** 2) / 4 if N >= 2 else 0.25
            leak = smallest_unflagged_sine(M) * margin / 20.0
            construction.beta = math.log(max(N - 1, 1) / leak) / cosine_gap(M)
        return construction

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        cos, sin = _symmetric_angles(x, self.M)
        flag = (torch.remainder(2 * x, self.M) == 0).to(x.dtype)
        return torch.stack([cos, sin, flag], dim=-1)

    def model(self) -> MultiHeadAttentionLayer:
        beta, threshold = self.beta, ratio_threshold(self.N)

        def query(e: torch.Tensor) -> torch.Tensor:
            return beta * torch.stack(
                [2.0 * e[..., 0], torch.ones_like(e[..., 0]), torch.zeros_like(e[..., 0])], -1
            )

        def key(e: torch.Tensor) -> torch.Tensor:
            return torch.stack([e[..., 0], -(e[..., 0] ** 2), torch.zeros_like(e[..., 0])], dim=-1)

        def value(e: torch.Tensor) -> torch.Tensor:
            return e

        def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            del tokens  # no residual: psi reads the attention output only
            cos, sin, flag = attended.unbind(-1)
            ratio = sin**2 / torch.clamp(1.0 - cos**2, min=1e-300)
            return ((flag > 0.5) | (ratio < threshold)).to(attended.dtype)

        head = AttentionUnit(query, key, value, precision=self.precision)
        return MultiHeadAttentionLayer(
            [head], input_map=self.embed, output_map=readout, precision=self.precision
        )

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tokens = torch.from_numpy(np.asarray(inputs["x"], dtype=np.float64)[..., None])
        with torch.no_grad():
            return self.model()(tokens[..., 0]).numpy().astype(np.int8)

    def verify(self, task=None, rng=0, n: int = 16):
        """Sampled and near-miss sequences (as for every Match construction), plus sequences made
        against this readout: many copies of a, at most one -a, and a near 0 or M/2 (small sin)."""
        task = matching_task(task, self.task())
        rng = as_generator(rng)
        verification = verify_match(task, self.predict, rng, n, order=2)
        x = np.empty((n, self.N), dtype=np.int64)
        for row in range(n):
            a = int(
                rng.choice(
                    [1, self.M - 1, self.M // 2 - 1, (self.M + 1) // 2, int(rng.integers(self.M))]
                )
            )
            x[row] = a
            if row % 2 == 1 and self.N > 1:
                x[row, rng.integers(1, self.N)] = (-a) % self.M
            x[row, rng.random(self.N) < 0.1] = (a + rng.choice([-1, 1])) % self.M
        inputs = {"x": x}
        extra = task.score(Batch(inputs, task.solve(inputs)), self.predict(inputs))
        verification.adversarial = merge_scores(
            [verification.adversarial, extra], [verification.n_adversarial, n]
        )
        verification.n_adversarial += n
        return verification


def smallest_match_precision(
    build: Callable[[int | None], Any], rng_seed: int = 0, n: int = 16, limit: int = 53
):
    """The construction build(p) at the smallest p whose verification has no wrong bit (p >= 53
    is float64 itself). Every candidate p is verified on the same sampled and near-miss inputs."""

    def errors_at(bits: int) -> float:
        return float(build(bits).verify(rng=np.random.default_rng(rng_seed), n=n).bit_errors)

    bits, history = smallest_passing(errors_at, 0.0, start=2, limit=limit, what="precision p")
    found = build(bits)
    found.search = history
    return found
