"""Local Match3 with one standard attention head: gather the window, check the pairs in psi.

match3-local (attnlab.tasks, window w): output_i = 1 iff some j1, j2 with |j1 - i| <= w and
|j2 - i| <= w (repeats allowed, i included) have x_i + x_j1 + x_j2 = 0 (mod M). Tokens are
(x_i, i). With W = 2w + 1:

- key of token j: u_j, a random sign vector (as in Theorem 2); query of token i: the dual
  certificate beta * w_{S_i} of its window S_i = {j : |j - i| <= w}, so the attention is
  (nearly) uniform on the window: the qSA gather of Theorem 2 with q = |S_i| <= W;
- value of token j: (cos theta_j, sin theta_j) placed in block (j mod W) of 2W coordinates. The
  positions of a window are W consecutive integers, so their residues mod W differ and the
  average over the window keeps every gathered value in its own block;
- psi (knows i, hence S_i and |S_i|): multiplies each block by |S_i|, snaps its angle to the
  nearest multiple of 2 pi / M, and tests all pairs of gathered residues against x_i.

Correctness is certified over all inputs: the attention weights depend only on positions, so the
N windows are checked exhaustively; the l1 distance of the weights from uniform bounds each
gathered vector's error by |S_i| times it, and snapping is exact while that stays below
sin(pi / M). The key width m' is the smallest the search finds with every window's l1 error
<= sin(pi / M) / (2W) (a factor-2 margin); from m' = N on the keys are one-hot positions, which
always pass. Width m = m' + 2W, one head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.constructions.match_common import check_modulus, verify_match
from attnlab.constructions.qsa_certificates import (
    certificate_temperature,
    certificate_weight_gaps,
    certificate_keys,
    certificates,
)
from attnlab.constructions.verification import ConstructionFailed, Verification, matching_task, smallest_passing
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.tasks import Match3Local


def window_tolerance(M: int, window: int) -> float:
    """The l1 attention error below which snapping every gathered angle is exact, halved."""
    return math.sin(math.pi / M) / (2 * (2 * window + 1))


@dataclass
class LocalMatch3:
    """One standard head gathering each token's window, for match3-local(N, M, window)."""

    N: int
    M: int
    window: int
    key_dim: int
    precision: int | None
    beta: float
    seed: int
    keys: np.ndarray = field(repr=False)
    search: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(cls, N: int, M: int, window: int, key_dim: int, precision: int | None = None,
              seed: int = 0) -> "LocalMatch3":
        task = Match3Local(N, check_modulus(M), window)
        width = 2 * task._reach() + 1
        beta = certificate_temperature(N, min(width, N), window_tolerance(M, window))
        return cls(int(N), int(M), int(window), int(key_dim), precision, beta, int(seed),
                   certificate_keys(key_dim, N, seed))

    @property
    def reach(self) -> int:
        return min(self.window, self.N - 1)

    @property
    def width(self) -> int:
        """W = 2w + 1 (w clipped to N - 1): window positions, and value blocks."""
        return 2 * self.reach + 1

    @property
    def m(self) -> int:
        return self.key_dim + 2 * self.width

    @property
    def heads(self) -> int:
        return 1

    def windows(self) -> list[np.ndarray]:
        return [np.arange(max(0, i - self.reach), min(self.N, i + self.reach + 1)) for i in range(self.N)]

    def window_errors(self) -> np.ndarray:
        """The l1 distance from uniform of every position's attention weights: (N,), exhaustive."""
        errors = np.empty(self.N)
        by_size: dict[int, list[int]] = {}
        for i, window in enumerate(self.windows()):
            by_size.setdefault(len(window), []).append(i)
        all_windows = self.windows()
        for size, positions in by_size.items():
            sets = np.stack([all_windows[i] for i in positions])
            gaps = certificate_weight_gaps(self.keys, sets, self.beta, self.precision)
            errors[positions] = np.abs(gaps).sum(axis=1)
        return errors

    def _query_table(self) -> torch.Tensor:
        keys = torch.from_numpy(self.keys)
        table = torch.empty(self.N, self.key_dim, dtype=torch.float64)
        for i, window in enumerate(self.windows()):
            table[i] = self.beta * certificates(keys, torch.from_numpy(window)[None])[0]
        return table

    def model(self) -> MultiHeadAttentionLayer:
        N, M, W = self.N, self.M, self.width
        keys, queries = torch.from_numpy(self.keys), self._query_table()
        sizes = torch.tensor([len(w) for w in self.windows()], dtype=torch.float64)
        residues = torch.arange(N) % W
        # present[i, r]: the window of i holds the position with residue r
        present = torch.zeros(N, W, dtype=torch.bool)
        for i, window in enumerate(self.windows()):
            present[i, torch.from_numpy(window % W)] = True

        def position(x: torch.Tensor) -> torch.Tensor:
            return x[..., 1].round().long()

        def value(x: torch.Tensor) -> torch.Tensor:
            theta = 2.0 * math.pi * x[..., 0] / M
            blocks = torch.nn.functional.one_hot(residues[position(x)], W).to(torch.float64)
            pair = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
            return (blocks[..., :, None] * pair[..., None, :]).flatten(-2)

        def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
            i = position(tokens)
            blocks = attended.unflatten(-1, (W, 2)) * sizes[i][..., None, None]
            gathered = torch.round(torch.atan2(blocks[..., 1], blocks[..., 0]) * M / (2.0 * math.pi)).long() % M
            own = tokens[..., 0].round().long()
            total = (own[..., None, None] + gathered[..., :, None] + gathered[..., None, :]) % M
            valid = present[i][..., :, None] & present[i][..., None, :]
            return ((total == 0) & valid).any(dim=-1).any(dim=-1).to(attended.dtype)

        head = AttentionUnit(lambda x: queries[position(x)], lambda x: keys.T[position(x)], value,
                             precision=self.precision)
        return MultiHeadAttentionLayer([head], output_map=readout, precision=self.precision)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = np.asarray(inputs["x"], dtype=np.float64)
        tokens = np.stack([x, np.broadcast_to(np.arange(self.N, dtype=np.float64), x.shape)], axis=-1)
        with torch.no_grad():
            return self.model()(torch.from_numpy(tokens)).numpy().astype(np.int8)

    def task(self) -> Match3Local:
        return Match3Local(self.N, self.M, self.window)

    def verify(self, task: Match3Local | None = None, rng=0, n: int = 16) -> Verification:
        task = matching_task(task, self.task())
        verification = verify_match(task, self.predict, rng, n, order=3)
        errors = self.window_errors()
        verification.notes.update({"window_l1_error_max": float(errors.max()),
                                   "window_l1_tolerance": window_tolerance(self.M, self.window),
                                   "certified_all_inputs": bool(errors.max() <= window_tolerance(self.M, self.window))})
        return verification

    def to_dict(self) -> dict[str, Any]:
        return {"task": "match3-local", "attention": "standard", "N": self.N, "M": self.M,
                "window": self.window, "m": self.m, "key_dim": self.key_dim, "heads": self.heads,
                "p": self.precision, "beta": self.beta, "seed": self.seed,
                "search": {str(k): v for k, v in sorted(self.search.items())}}


def smallest_local_match3(N: int, M: int, window: int, precision: int | None = None, seed: int = 0,
                          limit: int | None = None) -> LocalMatch3:
    """The local-Match3 head with the smallest key width m' whose every window passes."""
    tolerance = window_tolerance(M, window)
    limit = N if limit is None else limit

    def error_at(key_dim: int) -> float:
        return float(LocalMatch3.build(N, M, window, key_dim, precision, seed).window_errors().max())

    try:
        key_dim, history = smallest_passing(error_at, tolerance, start=2 * window + 1, limit=limit,
                                            what="key width m'")
    except ConstructionFailed as exc:
        raise ConstructionFailed(f"local Match3 N={N}, M={M}, window={window}: {exc}") from None
    found = LocalMatch3.build(N, M, window, key_dim, precision, seed)
    found.search = history
    return found
