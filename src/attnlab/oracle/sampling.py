"""Random query sequences, and grouping sequences of mixed lengths into stackable batches.

Shared by the Oracle (answering mixed-length batches), the fidelity check and the evaluation
code: one definition of "fresh random sequences" and one of "stack by length".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlab._random import Seed, as_generator


def random_sequences(
    rng: Seed, d: int, n: int, lengths=(1, 32), scale: float = 1.0
) -> list[np.ndarray]:
    """n sequences, lengths uniform in [lengths[0], lengths[1]], entries N(0, scale^2 / d)."""
    rng = as_generator(rng)
    lo, hi = lengths
    if not 1 <= lo <= hi:
        raise ValueError(f"lengths must be (lo, hi) with 1 <= lo <= hi, got {lengths!r}")
    sizes = rng.integers(lo, hi + 1, size=n)
    return [scale * rng.standard_normal((int(k), d)) / np.sqrt(d) for k in sizes]


def group_by_length(sequences: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(positions, stacked batch (B, N, d)) for each distinct length N, in increasing N.

    `positions` index into `sequences`, so results computed per batch can be scattered back
    into the original order with `out[positions] = batch_result`.
    """
    lengths = np.array([np.shape(s)[0] for s in sequences], dtype=np.int64)
    groups = []
    for length in np.unique(lengths):
        positions = np.flatnonzero(lengths == length)
        groups.append((positions, np.stack([sequences[int(i)] for i in positions])))
    return groups


def apply_by_length(fn, sequences: Sequence[np.ndarray]) -> np.ndarray:
    """fn applied batch-wise to sequences of mixed lengths; one float per sequence, in order."""
    out = np.empty(len(sequences))
    for positions, batch in group_by_length(sequences):
        out[positions] = fn(batch)
    return out
