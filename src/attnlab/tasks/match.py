"""Match2, Match3 and two Match3 variants standard attention can solve (Sanford et al. 2023, sec. 3).

Inputs: inputs["x"] (n, N) int64 residues in [0, M). Targets: (n, N) int8 bits.
Convention on repeated indices (fixed, used everywhere in attnlab; indices may repeat, as in the
paper's literal statement):

- match2: output_i = 1 iff some j in [N] (j = i allowed) has x_i + x_j = 0 (mod M). So a token
  with 2 x_i = 0 (mod M), e.g. x_i = 0, always matches itself.
- match3: output_i = 1 iff some j1, j2 in [N] (j1 = j2 allowed, either may equal i) have
  x_i + x_j1 + x_j2 = 0 (mod M).
- match3-local (window w): as match3 but j1, j2 range over positions with |j - i| <= w only
  (2w + 1 positions, fewer at the ends). One standard attention layer gathers the window
  (a qSA-style unit) and the output map checks the pairs, so standard attention solves it.
- match3-structured: each token j also carries a partner pointer inputs["partner"][j] = p(j)
  in [N] (p(j) = j allowed), hence the pair sum s_j = x_j + x_p(j) (mod M); the triple must use
  a carried pair: output_i = 1 iff some j has x_i + x_j + x_p(j) = 0 (mod M). The triple test is
  a pairwise test between x_i and s_j (Match2 on the pair sums), which standard attention solves.

Sampling. Uniform x makes match3 all ones once N^2 >> M (and match2 once N >> M), while for
M >> N^2 almost every bit is 0. With `balanced=True` (the default) the sampler aims for a
positive rate near 1/2 and stays symmetric between positions:
- dense regime (uniform x would give a positive rate above 1/2): each example draws its own
  support of r residues (uniform, with replacement) and x uniform on it, with r chosen from a
  coverage estimate so that about half the positions find a partner; no position is special.
- sparse regime (uniform x gives fewer positives): x uniform on [0, M), then a random set of
  positions is planted: x_i := -(sum of the x of partners drawn among the non-planted positions),
  which keeps every x_i uniform on [0, M), so the value alone tells nothing about the bit.
Targets always come from the exact solver, never from the planting. The achieved positive rate
is measured in benchmarks/results/tasks.md (and `positive_rate` reports it for a batch).

Tokens for generic models: the angle encoding (cos 2 pi x/M, sin 2 pi x/M), the form the
Match2 / Match3 constructions use; match3-local appends a one-hot position (token_dim 2 + N),
match3-structured appends the angle of the pair sum (token_dim 4).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import Any

import numpy as np

from attnlab.tasks.base import (
    Batch,
    Seed,
    Task,
    as_generator,
    as_predictions,
    check_count,
    inputs_of,
)
from attnlab.tasks.registry import register_task

TARGET_POSITIVE_RATE = 0.5
_CHUNK_ELEMENTS = 1 << 18
# Beyond this many support residues per position a restricted support behaves like uniform x.
_MAX_SUPPORT_PER_POSITION = 8


def rowwise_isin(values: np.ndarray, needles: np.ndarray, M: int) -> np.ndarray:
    """found[b, i] = needles[b, i] occurs in values[b, :], for residues in [0, M).

    Offsetting row b by b*M turns the per-row tests into one sorted search: O(size log size),
    independent of M.
    """
    n = values.shape[0]
    offsets = (np.arange(n, dtype=np.int64) * M)[:, None]
    haystack = np.sort((values.reshape(n, -1) + offsets).ravel())
    keys = needles + offsets
    pos = np.minimum(np.searchsorted(haystack, keys), haystack.size - 1)
    return haystack[pos] == keys


def pair_sum_residues_fft(x: np.ndarray, M: int) -> np.ndarray:
    """present[b, r] = some j1, j2 (repeats allowed) have x_j1 + x_j2 = r (mod M); O(M log M) per row.

    The residue counts convolved with themselves cyclically (by FFT) count ordered pairs per sum;
    counts are integers <= N^2, so float64 rounding error is far below the 0.5 cut.
    """
    n = x.shape[0]
    rows = (np.arange(n, dtype=np.int64) * M)[:, None]
    counts = np.bincount((x + rows).ravel(), minlength=n * M).reshape(n, M).astype(np.float64)
    spectrum = np.fft.rfft(counts, axis=1)
    pairs = np.fft.irfft(spectrum * spectrum, n=M, axis=1)
    return pairs > 0.5


def _distinct_expected(support: float, draws: int) -> float:
    """Expected number of distinct values among `draws` uniform draws from `support` values."""
    return support * -math.expm1(draws * math.log1p(-1.0 / support)) if support > 1 else 1.0


def _sum_coverage(sums: float, M: int) -> float:
    """Fraction of residues hit by `sums` pair sums, treating the sums as independent uniform."""
    return -math.expm1(-sums / M)


class MatchTask(Task):
    """Shared parts of the Match tasks: parameters, checks, balanced sampling, bit scoring."""

    # How many positions one planted value makes positive (the planted one and its partners
    # when the relation is symmetric); used only to size the planted set.
    positives_per_plant = 1

    def __init__(self, N: int, M: int, balanced: bool = True):
        self._N = check_count("N", N)
        self.M = check_count("M", M, minimum=2)
        self.balanced = bool(balanced)

    @property
    def params(self) -> dict[str, Any]:
        return {"N": self._N, "M": self.M, "balanced": self.balanced}

    @property
    def threshold(self) -> float:
        return 0.5

    @property
    def token_dim(self) -> int:
        return 2

    # --- what the subclasses define -------------------------------------------------------
    @abstractmethod
    def _coverage(self, distinct: float) -> float:
        """Estimated fraction of residues r for which a position with -x_i = r finds a match,
        when the positions it can see hold `distinct` distinct residues."""

    def _visible_positions(self) -> int:
        return self._N

    @abstractmethod
    def _plant(
        self,
        rng: np.random.Generator,
        x: np.ndarray,
        rank: np.ndarray,
        planted_count: int,
        inputs: dict[str, np.ndarray],
    ) -> None:
        """Overwrite x, in place, at the positions of rank < planted_count with values that match
        partners among the other (base) positions."""

    def _extra_inputs(self, rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {}

    # --- sampling ---------------------------------------------------------------------------
    def expected_positive_rate(self, support: float) -> float:
        """Coverage estimate of the positive rate when x is uniform on `support` residues."""
        return self._coverage(_distinct_expected(support, self._visible_positions()))

    def sampling_plan(self) -> dict[str, float]:
        """How `balanced` sampling draws x: {"support": r or M, "planted_fraction": f}."""
        if not self.balanced:
            return {"support": self.M, "planted_fraction": 0.0}
        uniform_rate = self.expected_positive_rate(self.M)
        if uniform_rate > TARGET_POSITIVE_RATE:
            lo, hi = 1, self.M  # expected rate increases with the support size
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (
                    (mid, hi)
                    if self.expected_positive_rate(mid) <= TARGET_POSITIVE_RATE
                    else (lo, mid)
                )
            if hi > _MAX_SUPPORT_PER_POSITION * self._N:
                return {"support": self.M, "planted_fraction": 0.0}
            return {"support": hi, "planted_fraction": 0.0}
        missing = (TARGET_POSITIVE_RATE - uniform_rate) / (1.0 - uniform_rate)
        return {"support": self.M, "planted_fraction": min(0.5, missing / self.positives_per_plant)}

    def sample(self, rng: Seed, n: int) -> Batch:
        rng = as_generator(rng)
        n = check_count("n", n)
        N, M = self._N, self.M
        plan = self.sampling_plan()
        support = int(plan["support"])
        if support < M:
            residues = rng.integers(0, M, size=(n, support), dtype=np.int64)
            x = np.take_along_axis(residues, rng.integers(0, support, size=(n, N)), axis=1)
        else:
            x = rng.integers(0, M, size=(n, N), dtype=np.int64)
        inputs = {"x": x, **self._extra_inputs(rng, n)}
        planted_count = int(round(plan["planted_fraction"] * N))
        if planted_count and N - planted_count >= 1:
            # rank < planted_count marks the planted positions; the others are the base.
            rank = np.argsort(rng.random((n, N)), axis=1).argsort(axis=1)
            self._plant(rng, x, rank, planted_count, inputs)
        return Batch(inputs, self.solve(inputs))

    def positive_rate(self, batch: Batch) -> float:
        """Fraction of target bits equal to 1."""
        return float(np.mean(batch.targets))

    # --- checks, tokens, scoring --------------------------------------------------------------
    def _check_x(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        if "x" not in inputs:
            raise ValueError(f"{self.name} inputs need the field 'x' (n, N) of residues")
        x = np.asarray(inputs["x"])
        if x.ndim != 2 or x.shape[1] != self._N:
            raise ValueError(
                f"{self.name} inputs['x'] must have shape (n, {self._N}), got {x.shape}"
            )
        if not np.issubdtype(x.dtype, np.integer) or (
            x.size and (x.min() < 0 or x.max() >= self.M)
        ):
            raise ValueError(f"{self.name} inputs['x'] must hold integer residues in [0, {self.M})")
        return x.astype(np.int64, copy=False)

    def _angles(self, x: np.ndarray) -> np.ndarray:
        theta = 2.0 * np.pi * x / self.M
        return np.stack([np.cos(theta), np.sin(theta)], axis=-1)

    def tokens(self, batch: Batch | dict[str, np.ndarray]) -> np.ndarray:
        return self._angles(self._check_x(inputs_of(batch)))

    def score(self, batch: Batch, predictions) -> dict[str, float]:
        predictions = as_predictions(predictions, batch.targets.shape, self)
        wrong = (predictions >= 0.5) != (batch.targets == 1)
        return {
            "bit_errors": float(wrong.sum()),
            "bit_error_rate": float(wrong.mean()),
            "max_error": float(wrong.any(axis=1).mean()),
        }


def _base_partners(
    rng: np.random.Generator, rank: np.ndarray, planted_count: int, count: int
) -> np.ndarray:
    """`count` partner positions per cell, uniform among the example's base (non-planted) positions,
    which are those of rank >= planted_count."""
    n, N = rank.shape
    by_rank = np.argsort(rank, axis=1)  # by_rank[b, k] = the position holding rank k
    picks = rng.integers(planted_count, N, size=(n, N * count))
    return np.take_along_axis(by_rank, picks, axis=1).reshape(n, N, count)


@register_task("match2")
class Match2(MatchTask):
    description = "Match2: output_i = 1 iff some j (j = i allowed) has x_i + x_j = 0 mod M"
    positives_per_plant = 2

    def _coverage(self, distinct: float) -> float:
        return distinct / self.M

    def _plant(self, rng, x, rank, planted_count, inputs) -> None:
        partner = _base_partners(rng, rank, planted_count, 1)[..., 0]
        wanted = (-np.take_along_axis(x, partner, axis=1)) % self.M
        np.copyto(x, wanted, where=rank < planted_count)

    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = self._check_x(inputs)
        return rowwise_isin(x, (-x) % self.M, self.M).astype(np.int8)


@register_task("match3")
class Match3(MatchTask):
    description = (
        "Match3: output_i = 1 iff some j1, j2 (repeats allowed) have x_i + x_j1 + x_j2 = 0 mod M"
    )
    positives_per_plant = 3

    def _coverage(self, distinct: float) -> float:
        return _sum_coverage(distinct * (distinct + 1) / 2, self.M)

    def _plant(self, rng, x, rank, planted_count, inputs) -> None:
        partners = _base_partners(rng, rank, planted_count, 2)
        sums = np.take_along_axis(x, partners[..., 0], axis=1) + np.take_along_axis(
            x, partners[..., 1], axis=1
        )
        np.copyto(x, (-sums) % self.M, where=rank < planted_count)

    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x = self._check_x(inputs)
        N, M = self._N, self.M
        # FFT costs ~M log M per row, pair sums ~N^2 log N^2: measured break-even near M = N^2 / 2.
        use_fft = 2 * M <= N * N
        # Rows in chunks of ~2^18 working numbers: cache-sized pieces measured 3-6x faster
        # than one pass over the whole batch.
        rows = max(1, _CHUNK_ELEMENTS // (M if use_fft else N * (N + 1) // 2))
        out = np.empty(x.shape, dtype=np.int8)
        for start in range(0, x.shape[0], rows):
            out[start : start + rows] = self._solve_rows(x[start : start + rows], use_fft)
        return out

    def _solve_rows(self, x: np.ndarray, use_fft: bool) -> np.ndarray:
        wanted = (-x) % self.M
        if use_fft:
            return np.take_along_axis(pair_sum_residues_fft(x, self.M), wanted, axis=1)
        j1, j2 = np.triu_indices(self._N)
        return rowwise_isin((x[:, j1] + x[:, j2]) % self.M, wanted, self.M)
