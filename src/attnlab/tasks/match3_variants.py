"""Match3 variants that standard (pairwise) attention solves: local windows and carried pair sums.

Definitions and conventions are in attnlab.tasks.match (module docstring); in short:
- match3-local (N, M, window w): output_i = 1 iff some j1, j2 with |j1 - i| <= w and
  |j2 - i| <= w (repeats allowed, i included) have x_i + x_j1 + x_j2 = 0 (mod M).
- match3-structured (N, M): inputs["partner"] (n, N) int64 gives each token j a partner p(j)
  (uniform in [N], p(j) = j allowed); output_i = 1 iff some j has x_i + x_j + x_p(j) = 0 (mod M).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlab.tasks.base import Batch, check_count, inputs_of
from attnlab.tasks.match import (
    MatchTask,
    _base_partners,
    _distinct_expected,
    _sum_coverage,
    rowwise_isin,
)
from attnlab.tasks.registry import register_task

# Tries per planted position at finding partners that satisfy a variant's constraint; a
# position whose tries all fail keeps its base value (slightly fewer plants, never a bias).
_PLANT_TRIES = 8


def _first_valid(candidates: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cell, the first candidate (last axis) whose `valid` flag is set, and whether any was."""
    first = valid.argmax(axis=-1)
    chosen = np.take_along_axis(candidates, first[..., None], axis=-1)[..., 0]
    return chosen, valid.any(axis=-1)


@register_task("match3-local")
class Match3Local(MatchTask):
    description = "Match3 with partners j1, j2 restricted to the window |j - i| <= w around i"
    positives_per_plant = 2

    def __init__(self, N: int, M: int, window: int = 2, balanced: bool = True):
        super().__init__(N, M, balanced)
        self.window = check_count("window", window, minimum=0)

    @property
    def params(self) -> dict[str, Any]:
        return {"N": self._N, "M": self.M, "window": self.window, "balanced": self.balanced}

    @property
    def token_dim(self) -> int:
        return 2 + self._N

    def _reach(self) -> int:
        return min(self.window, self._N - 1)

    def _visible_positions(self) -> int:
        return 2 * self._reach() + 1

    def _coverage(self, distinct: float) -> float:
        return _sum_coverage(distinct * (distinct + 1) / 2, self.M)

    def _partners_in_window(self, rng, rank, planted_count) -> tuple[np.ndarray, np.ndarray]:
        n, N = rank.shape
        w = self._reach()
        positions = np.arange(N)[None, :, None] + rng.integers(-w, w + 1, size=(n, N, _PLANT_TRIES))
        inside = (positions >= 0) & (positions < N)
        positions = np.clip(positions, 0, N - 1)
        is_base = (
            np.take_along_axis(rank, positions.reshape(n, -1), axis=1).reshape(positions.shape)
            >= planted_count
        )
        return _first_valid(positions, inside & is_base)

    def _plant(self, rng, x, rank, planted_count, inputs) -> None:
        j1, found1 = self._partners_in_window(rng, rank, planted_count)
        j2, found2 = self._partners_in_window(rng, rank, planted_count)
        sums = np.take_along_axis(x, j1, axis=1) + np.take_along_axis(x, j2, axis=1)
        np.copyto(x, (-sums) % self.M, where=(rank < planted_count) & found1 & found2)

    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = self._check_x(inputs)
        N, M, w = self._N, self.M, self._reach()
        padded = np.pad(x, ((0, 0), (w, w)))
        inside = np.pad(np.ones(N, dtype=bool), (w, w))
        hit = np.zeros(x.shape, dtype=bool)
        # Unordered offset pairs (a <= b) cover every (j1, j2) since the sum is symmetric.
        for a in range(2 * w + 1):
            for b in range(a, 2 * w + 1):
                ok = inside[a : a + N] & inside[b : b + N]
                hit |= ok & ((x + padded[:, a : a + N] + padded[:, b : b + N]) % M == 0)
        return hit.astype(np.int8)

    def tokens(self, batch: Batch | dict[str, np.ndarray]) -> np.ndarray:
        angles = super().tokens(batch)
        position = np.broadcast_to(np.eye(self._N), (angles.shape[0], self._N, self._N))
        return np.concatenate([angles, position], axis=-1)


@register_task("match3-structured")
class Match3Structured(MatchTask):
    description = "Match3 over carried pairs: some j has x_i + x_j + x_partner(j) = 0 mod M"
    positives_per_plant = 1

    @property
    def token_dim(self) -> int:
        return 4

    def _coverage(self, distinct: float) -> float:
        # N carried sums, each uniform over the ~min(M, D(D+1)/2) sums the support can make.
        possible = min(float(self.M), distinct * (distinct + 1) / 2)
        return _distinct_expected(possible, self._N) / self.M

    def _extra_inputs(self, rng, n) -> dict[str, np.ndarray]:
        return {"partner": rng.integers(0, self._N, size=(n, self._N), dtype=np.int64)}

    def _plant(self, rng, x, rank, planted_count, inputs) -> None:
        candidates = _base_partners(rng, rank, planted_count, _PLANT_TRIES)
        n, N, _ = candidates.shape
        partner = inputs["partner"]
        partner_of_candidate = np.take_along_axis(partner, candidates.reshape(n, -1), axis=1)
        partner_is_base = (
            np.take_along_axis(rank, partner_of_candidate, axis=1).reshape(candidates.shape)
            >= planted_count
        )
        j, found = _first_valid(candidates, partner_is_base)
        sums = np.take_along_axis(x, j, axis=1) + np.take_along_axis(
            x, np.take_along_axis(partner, j, axis=1), axis=1
        )
        np.copyto(x, (-sums) % self.M, where=(rank < planted_count) & found)

    def _check_partner(self, inputs: dict[str, np.ndarray], n: int) -> np.ndarray:
        if "partner" not in inputs:
            raise ValueError(
                "match3-structured inputs need the field 'partner' (n, N) of positions"
            )
        partner = np.asarray(inputs["partner"])
        if partner.shape != (n, self._N) or not np.issubdtype(partner.dtype, np.integer):
            raise ValueError(
                f"match3-structured inputs['partner'] must be integers of shape ({n}, {self._N})"
            )
        if partner.size and (partner.min() < 0 or partner.max() >= self._N):
            raise ValueError(
                f"match3-structured inputs['partner'] must hold positions in [0, {self._N})"
            )
        return partner.astype(np.int64, copy=False)

    def pair_sums(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """s_j = x_j + x_partner(j) mod M, the sum each token carries: (n, N) int64."""
        x = self._check_x(inputs)
        partner = self._check_partner(inputs, x.shape[0])
        return (x + np.take_along_axis(x, partner, axis=1)) % self.M

    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = self._check_x(inputs)
        return rowwise_isin(self.pair_sums(inputs), (-x) % self.M, self.M).astype(np.int8)

    def tokens(self, batch: Batch | dict[str, np.ndarray]) -> np.ndarray:
        inputs = inputs_of(batch)
        return np.concatenate(
            [super().tokens(inputs), self._angles(self.pair_sums(inputs))], axis=-1
        )
