"""Local Match3 with one standard attention head of width independent of N.

match3-local (attnlab.tasks, window w): output_i = 1 iff some j1, j2 with |j1 - i| <= w and
|j2 - i| <= w (repeats allowed, i included) have x_i + x_j1 + x_j2 = 0 (mod M). Tokens are
(x_i, i). With W = 2w + 1 (w clipped to N - 1) and positions on a circle of period P = N + w,
phi_j = 2 pi j / P:

- key of token j: (cos phi_j, sin phi_j); query of token i: beta (cos phi_i, sin phi_i), so the
  logit is beta cos(phi_j - phi_i): at least beta cos(2 pi w / P) inside the window, at most
  beta cos(2 pi (w + 1) / P) outside it (P >= N + w keeps the circle from wrapping a window);
- value of token j: (cos theta_j, sin theta_j), theta = 2 pi x / M, placed in block (j mod W) of
  2W coordinates. A window's positions are W consecutive integers, so each block holds one
  window member, weighted by its (unequal, but positive) attention weight, plus leak from
  off-window tokens with the same residue;
- psi (knows i, hence which residues its window holds): snaps each block's angle to the
  nearest multiple of 2 pi / M and tests all pairs of gathered residues against x_i. The block's
  magnitude does not matter, so the weights need not be uniform.

Width: 2 key/query coordinates + 2W value coordinates, m = 2 + 2W, whatever N is. What grows
with N is the precision: the logit gap is beta (cos(2 pi w/P) - cos(2 pi (w+1)/P)) ~ beta (2 pi/P)^2 W / 2,
so logits need about 2 log2 N bits. Some growth is unavoidable at constant width: keys of d
numbers with p bits take at most 2^{dp} values, and two positions with the same key are
attended alike from everywhere, so d p >= log2 N.

Certified over all inputs: the attention weights depend only on positions, so every window is
checked exhaustively. For each position i and each residue r its window holds, with a the
weight of the window member and L the weight of off-window tokens with residue r, the block's
angle is off by at most arcsin(L / a) plus the value/output rounding (<= 4 * 2^-p); snapping
is exact while that stays below pi / M. `window_errors` returns L / a + 4 * 2^-p per position
and the certificate requires it <= sin(pi / M) / 2 (a factor-2 margin). `smallest_local_match3`
searches the smallest precision p that certifies.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.constructions.match_common import check_modulus, verify_match
from attnlab.constructions.verification import (
    ConstructionFailed,
    Verification,
    matching_task,
    smallest_passing,
)
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.tasks import Match3Local


def window_tolerance(M: int) -> float:
    """Half the angle error (as a sine) below which snapping a gathered angle is exact."""
    return math.sin(math.pi / M) / 2


def rounding_slack(precision: int | None) -> float:
    return 0.0 if precision is None or precision >= 53 else 4.0 * 2.0**-precision


@dataclass
class LocalMatch3:
    """One standard head gathering each token's window, for match3-local(N, M, window)."""

    N: int
    M: int
    window: int
    precision: int | None
    beta: float
    search: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(
        cls, N: int, M: int, window: int, precision: int | None = None, beta: float | None = None
    ) -> LocalMatch3:
        task = Match3Local(N, check_modulus(M), window)
        reach = task._reach()
        construction = cls(int(N), int(M), int(window), precision, 1.0)
        if beta is None:
            period = construction.period
            gap = math.cos(2 * math.pi * reach / period) - math.cos(
                2 * math.pi * (reach + 1) / period
            )
            others = max(1, math.ceil(N / (2 * reach + 1)))
            beta = math.log(others / (window_tolerance(M) / 4)) / gap if reach < N - 1 else 0.0
        construction.beta = float(beta)
        return construction

    @property
    def reach(self) -> int:
        return min(self.window, self.N - 1)

    @property
    def width(self) -> int:
        """W = 2w + 1 (w clipped to N - 1): window positions, and value blocks."""
        return 2 * self.reach + 1

    @property
    def period(self) -> int:
        return self.N + self.reach

    @property
    def key_dim(self) -> int:
        return 2

    @property
    def m(self) -> int:
        return self.key_dim + 2 * self.width

    @property
    def heads(self) -> int:
        return 1

    def windows(self) -> list[np.ndarray]:
        return [
            np.arange(max(0, i - self.reach), min(self.N, i + self.reach + 1))
            for i in range(self.N)
        ]

    def _position_angles(self, position: torch.Tensor) -> torch.Tensor:
        phase = 2.0 * math.pi * position.to(torch.float64) / self.period
        return torch.stack([torch.cos(phase), torch.sin(phase)], dim=-1)

    def _head(self) -> AttentionUnit:
        W, M = self.width, self.M

        def position(x: torch.Tensor) -> torch.Tensor:
            return x[..., 1].round().long()

        def value(x: torch.Tensor) -> torch.Tensor:
            theta = 2.0 * math.pi * x[..., 0] / M
            blocks = torch.nn.functional.one_hot(position(x) % W, W).to(torch.float64)
            pair = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
            return (blocks[..., :, None] * pair[..., None, :]).flatten(-2)

        return AttentionUnit(
            lambda x: self.beta * self._position_angles(position(x)),
            lambda x: self._position_angles(position(x)),
            value,
            precision=self.precision,
        )

    def window_errors(self) -> np.ndarray:
        """Per position, the largest L / a over the residues its window holds, plus the rounding
        slack (module doc): (N,), exhaustive over all positions (the weights ignore x)."""
        tokens = torch.stack(
            [torch.zeros(self.N, dtype=torch.float64), torch.arange(self.N, dtype=torch.float64)],
            dim=-1,
        )[None]
        with torch.no_grad():
            weights = self._head().attention_weights(tokens)[0].numpy()  # (N, N)
        residues = np.arange(self.N) % self.width
        errors = np.empty(self.N)
        for i, window in enumerate(self.windows()):
            inside = np.zeros(self.N, dtype=bool)
            inside[window] = True
            leak = np.bincount(residues[~inside], weights=weights[i, ~inside], minlength=self.width)
            member = weights[i, window]
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(member > 0, leak[residues[window]] / member, np.inf)
            errors[i] = float(np.max(ratio))  # a member with weight 0 is lost: infinite error
        return errors + rounding_slack(self.precision)

    def certified(self) -> bool:
        return bool(self.window_errors().max() <= window_tolerance(self.M))

    def model(self) -> MultiHeadAttentionLayer:
        N, M, W = self.N, self.M, self.width
        # present[i, r]: the window of i holds the position with residue r
        present = torch.zeros(N, W, dtype=torch.bool)
        for i, window in enumerate(self.windows()):
            present[i, torch.from_numpy(window % W)] = True

        def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            i = tokens[..., 1].round().long()
            blocks = attended.unflatten(-1, (W, 2))
            gathered = (
                torch.round(
                    torch.atan2(blocks[..., 1], blocks[..., 0]) * M / (2.0 * math.pi)
                ).long()
                % M
            )
            own = tokens[..., 0].round().long()
            total = (own[..., None, None] + gathered[..., :, None] + gathered[..., None, :]) % M
            valid = present[i][..., :, None] & present[i][..., None, :]
            return ((total == 0) & valid).any(dim=-1).any(dim=-1).to(attended.dtype)

        return MultiHeadAttentionLayer([self._head()], output_map=readout, precision=self.precision)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = np.asarray(inputs["x"], dtype=np.float64)
        tokens = np.stack(
            [x, np.broadcast_to(np.arange(self.N, dtype=np.float64), x.shape)], axis=-1
        )
        with torch.no_grad():
            return self.model()(torch.from_numpy(tokens)).numpy().astype(np.int8)

    def task(self) -> Match3Local:
        return Match3Local(self.N, self.M, self.window)

    def verify(self, task: Match3Local | None = None, rng=0, n: int = 16) -> Verification:
        task = matching_task(task, self.task())
        verification = verify_match(task, self.predict, rng, n, order=3)
        errors = self.window_errors()
        verification.notes.update(
            {
                "window_error_max": float(errors.max()),
                "window_tolerance": window_tolerance(self.M),
                "certified_all_inputs": bool(errors.max() <= window_tolerance(self.M)),
            }
        )
        return verification

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": "match3-local",
            "attention": "standard",
            "N": self.N,
            "M": self.M,
            "window": self.window,
            "m": self.m,
            "key_dim": self.key_dim,
            "value_dim": 2 * self.width,
            "heads": self.heads,
            "p": self.precision,
            "beta": self.beta,
            "residual": True,
            "search": {str(k): v for k, v in sorted(self.search.items())},
        }


def smallest_local_match3(
    N: int, M: int, window: int, precision: int | None = None, seed: int = 0, limit: int = 53
) -> LocalMatch3:
    """The local-Match3 head at the smallest precision p (p >= 53: float64) whose every window is
    certified; with `precision` given, that head (raising if it does not certify). `seed` is
    accepted for a uniform signature: the construction has no randomness."""
    del seed
    tolerance = window_tolerance(M)
    if precision is not None:
        found = LocalMatch3.build(N, M, window, precision)
        if found.window_errors().max() > tolerance:
            raise ConstructionFailed(
                f"local Match3 N={N}, M={M}, window={window}: p={precision} bits do not "
                "certify every window; give more precision (or omit --p to search it)"
            )
        return found

    def error_at(bits: int) -> float:
        return float(
            LocalMatch3.build(N, M, window, None if bits >= 53 else bits).window_errors().max()
        )

    try:
        bits, history = smallest_passing(
            error_at, tolerance, start=2, limit=limit, what="precision p"
        )
    except ConstructionFailed as exc:
        raise ConstructionFailed(f"local Match3 N={N}, M={M}, window={window}: {exc}") from None
    found = LocalMatch3.build(N, M, window, None if bits >= 53 else bits)
    found.search = history
    return found
