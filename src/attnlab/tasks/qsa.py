"""q-sparse averaging (qSA), Sanford, Hsu and Telgarsky 2023, Definition 4.

Token i carries z_i (a point of the unit ball of R^{d'}), y_i (a set of q distinct positions) and
its own index i; the target at i is the mean of z_j over j in y_i:

    qSA(X)_i = (1/q) sum_{j in y_i} z_j

Conventions (used everywhere in attnlab):
- inputs["z"]: (n, N, d') float64, uniform in the unit ball (uniform direction, radius U^{1/d'}).
- inputs["y"]: (n, N, q) int64, q distinct indices drawn uniformly from [N], sorted increasingly
  (a set has no order; sorting makes the representation canonical). i itself may be in y_i.
- positions are implicit: token i sits at index i (0-based).
- targets: (n, N, d') float64.
- score: worst case over positions and examples of ||prediction - target||_2 ("max_error", the
  paper's eps-approximation measured on the batch) and its mean; the paper's lower bound uses
  eps = 1/(2q), which is `threshold`.
- tokens: (z_i, multi-hot(y_i) in {0,1}^N, one-hot(i) in {0,1}^N), token_dim = d' + 2N; the
  multi-hot form is far easier for generic models to learn than q raw integers. Constructions
  that need the paper's literal token (z_i, y_i, i) read `inputs` directly.
"""

from __future__ import annotations

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

_CHUNK_TOKENS = 1 << 14


def distinct_indices(
    rng: np.random.Generator, shape: tuple[int, ...], q: int, N: int
) -> np.ndarray:
    """Uniform q-subsets of [N] for every cell of `shape`, sorted: an int64 array shape + (q,).

    Floyd's algorithm vectorised over cells: step k draws t uniform in [0, N-q+k] and keeps it
    unless already chosen, in which case it keeps N-q+k. Every q-subset is equally likely, and
    the work is O(cells * q^2) with no (cells, N) temporary, so N can be large.
    """
    if not 1 <= q <= N:
        raise ValueError(f"need 1 <= q <= N to draw q distinct indices from [N], got q={q}, N={N}")
    cells = int(np.prod(shape, dtype=np.int64))
    chosen = np.empty((q, cells), dtype=np.int64)  # one contiguous row per slot
    for k in range(q):
        top = N - q + k
        t = rng.integers(0, top + 1, size=cells, dtype=np.int64)
        taken = (chosen[:k] == t).any(axis=0)
        chosen[k] = np.where(taken, top, t)
    subsets = np.ascontiguousarray(chosen.T)
    subsets.sort(axis=1)
    return subsets.reshape(*shape, q)


def uniform_ball(rng: np.random.Generator, shape: tuple[int, ...], dim: int) -> np.ndarray:
    """Points uniform in the unit ball of R^dim, float64 array shape + (dim,)."""
    points = rng.standard_normal((*shape, dim))
    norm = np.sqrt(np.einsum("...i,...i->...", points, points))
    # A Gaussian vector of norm exactly 0 has probability 0; the floor only keeps the maths total.
    scale = rng.random(shape) ** (1.0 / dim) / np.maximum(norm, np.finfo(np.float64).tiny)
    points *= scale[
        ..., None
    ]  # in place: at 1e5 x 64 tokens a fresh array costs more than the maths
    return points


@register_task("qsa")
class QSparseAveraging(Task):
    description = "q-sparse averaging: output_i = mean of z_j over the q positions j in y_i"

    def __init__(self, N: int, q: int, d_prime: int = 4):
        self._N = check_count("N", N)
        self.q = check_count("q", q)
        self.d_prime = check_count("d_prime", d_prime)
        if self.q > self._N:
            raise ValueError(f"qSA needs q <= N (q distinct positions out of N), got q={q}, N={N}")

    @property
    def params(self) -> dict[str, Any]:
        return {"N": self._N, "q": self.q, "d_prime": self.d_prime}

    @property
    def threshold(self) -> float:
        return 1.0 / (2 * self.q)

    @property
    def token_dim(self) -> int:
        return self.d_prime + 2 * self._N

    def sample(self, rng: Seed, n: int) -> Batch:
        rng = as_generator(rng)
        n = check_count("n", n)
        N, q, d = self._N, self.q, self.d_prime
        z, y, targets = (
            np.empty((n, N, d)),
            np.empty((n, N, q), dtype=np.int64),
            np.empty((n, N, d)),
        )
        # ~2^14 tokens at a time keep the temporaries in cache: measured ~40% less CPU at 1e5 x 64
        rows = max(1, _CHUNK_TOKENS // N)
        for start in range(0, n, rows):
            block = slice(start, min(n, start + rows))
            count = block.stop - block.start
            z[block] = uniform_ball(rng, (count, N), d)
            y[block] = distinct_indices(rng, (count, N), q, N)
            targets[block] = self._average(z[block], y[block])
        return Batch({"z": z, "y": y}, targets)

    def _check(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        try:
            z, y = np.asarray(inputs["z"], dtype=np.float64), np.asarray(inputs["y"])
        except KeyError as missing:
            raise ValueError(f"qsa inputs need fields 'z' and 'y'; {missing} is missing") from None
        N, q, d = self._N, self.q, self.d_prime
        if z.ndim != 3 or z.shape[1:] != (N, d):
            raise ValueError(f"qsa inputs['z'] must have shape (n, {N}, {d}), got {z.shape}")
        if y.shape != (z.shape[0], N, q):
            raise ValueError(
                f"qsa inputs['y'] must have shape ({z.shape[0]}, {N}, {q}), got {y.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() >= N)):
            raise ValueError(f"qsa inputs['y'] must hold integer positions in [0, {N})")
        return z, y.astype(np.int64, copy=False)

    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return self._average(*self._check(inputs))

    def _average(self, z: np.ndarray, y: np.ndarray) -> np.ndarray:
        n, N, d = z.shape
        rows = z.reshape(n * N, d)
        offsets = (np.arange(n, dtype=np.int64) * N)[:, None]
        # One row gather per pointer slot keeps the temporary at (n, N, d'), not (n, N, q, d').
        total = np.take(rows, (y[:, :, 0] + offsets).ravel(), axis=0)
        for k in range(1, self.q):
            total += np.take(rows, (y[:, :, k] + offsets).ravel(), axis=0)
        total /= self.q
        return total.reshape(n, N, d)

    def tokens(self, batch: Batch | dict[str, np.ndarray]) -> np.ndarray:
        z, y = self._check(inputs_of(batch))
        n, N = z.shape[0], self._N
        pointers = np.zeros((n, N, N))
        np.put_along_axis(pointers, y, 1.0, axis=-1)
        position = np.broadcast_to(np.eye(N), (n, N, N))
        return np.concatenate([z, pointers, position], axis=-1)

    def score(self, batch: Batch, predictions) -> dict[str, float]:
        predictions = as_predictions(predictions, batch.targets.shape, self)
        errors = np.linalg.norm(predictions - batch.targets, axis=-1)
        return {"max_error": float(errors.max()), "mean_error": float(errors.mean())}
