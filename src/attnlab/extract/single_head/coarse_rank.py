"""rank="auto" on coarse (float32/float16) answers: the noise-aware pieces of `adaptive`.

Once the reading noise is measured from the answers (`precision.noise_from_column`), the rank is
decided by the spectrum of what was read against the noise edge, and a full read replaces the
low-rank one where the 2x query ceiling affords it.
"""

from __future__ import annotations

import numpy as np

from attnlab.extract.single_head.directions import DenseDirections, Directions
from attnlab.extract.single_head.reader import BilinearReader

# What the precision-aware reader (`precision.PrecisionReader`) spends on top of the probes: the
# warm-up entries of each line read again (~5), and a few more (the reader's first lines are
# re-read before this point and counted in the queries already spent).
REREAD_PER_LINE = 5
REREAD_FIXED = 10


# rank="auto" on coarse answers: singular values above this many times the noise edge count. The
# errors are not independent (the u read's error is shared along a row): float16's largest noise
# singular value sat at 2x the independent edge (d = 384), the heads' smallest signal ones at
# 150x; bfloat16's (8 bits) smallest signal ones at 5x-10x.
RANK_EDGE_Z = 4.0


def read_columns(reader: BilinearReader, A: Directions, Q: np.ndarray) -> np.ndarray:
    """C = A^T W Q, one line per column of Q."""
    everything = np.arange(A.d)
    lines = [(everything, j) for j in range(Q.shape[1])]
    return np.column_stack(reader.read_lines(A, DenseDirections(Q.T), lines))


# Coarse answers: the check reads this many rows besides the r pivots (not 2), and fits the
# new column at all r + k rows by the old ones: the misfit over k degrees of freedom separates a
# dependent column's noise from an independent column far better than the largest of two
# predictions from an r x r solve, whose noise the last, ill-conditioned columns amplify (the
# extra rows are part of the column when it is independent; the last, dependent column costs
# COARSE_CHECKS - 2 queries more).
COARSE_CHECKS = 32
# ... and declared dependent when its mean square misfit is within this many times the noise
# the model predicts (chi-square over 32 degrees of freedom stays below 2.5 but for 1 in 1e5;
# the model is rougher than that: the check rows are the pivots, the largest entries, whose
# logits are the largest and noisiest, and the noise is measured on 32 entries; a dependent
# float32 column measured 4.8). A column called dependent too early is caught by the
# oversampled columns' noise edge (`oversampled`), one called independent costs queries.
RANK_NOISE_TOL = 8.0


def read_the_rest(reader, A, Q, columns, rng, read_noise: float, query_ceiling):
    """rank="auto" on coarse answers once a full read is affordable: every column, then W.

    The rank is the number of singular values above RANK_EDGE_Z x the noise edge of the d x d
    read, W the truncation at the edge itself (weak but real directions are kept: a BERT head's
    30th of 32 sits at 3.6x; the noise bulk below is dropped). What the ceiling at that rank
    leaves (the true rank is at least it) reads columns again along -q, on fresh lines, and
    averages the two reads (the u read's error cancels).
    """
    d = A.d
    rest = complement(Q, rng)
    columns = np.column_stack([columns, read_columns(reader, A, rest)])
    Q = np.column_stack([Q, rest])
    noise = read_noise
    found, kept, edge, s = numerical_rank(columns, noise)
    again = 0
    if query_ceiling is not None:
        left = query_ceiling(found) - reader.oracle.queries - REREAD_FIXED
        again = int(max(0, min(d, left // (d + REREAD_PER_LINE + 1))))
    if again:
        minus = read_columns(reader, A, -Q[:, :again])
        columns[:, :again] = 0.5 * (columns[:, :again] - minus)
        noise = read_noise * float(np.sqrt(1.0 - again / (2.0 * d)))
        found, kept, edge, s = numerical_rank(columns, noise)
    U, _, Vt = np.linalg.svd(columns)
    M = (U[:, :kept] * s[:kept]) @ Vt[:kept]
    return A.apply(M) @ Q.T, {
        "rank": found,
        "rank_kept": kept,
        "rank_mode": "auto-full",
        "read_noise": read_noise,
        "read_twice": again,
        "full_read_noise": noise,
        "noise_edge": float(RANK_EDGE_Z * edge / s[0]),
        "singular_values": [float(x) for x in s[max(0, found - 2) : found + 4] / s[0]],
    }


def numerical_rank(columns: np.ndarray, noise: float):
    """(rank above RANK_EDGE_Z x the noise edge, count above the edge, edge, singular values)."""
    d, n = columns.shape
    s = np.linalg.svd(columns, compute_uv=False)
    edge = noise * float(np.sqrt(np.mean(columns**2))) * float(np.sqrt(d) + np.sqrt(n))
    found = max(1, int(np.sum(s > RANK_EDGE_Z * edge)))
    return found, max(found, int(np.sum(s > edge))), edge, s


def full_read_affordable(reader, d: int, r: int, query_ceiling) -> bool:
    """Whether reading the d - r remaining columns in full stays within the ceiling at rank r."""
    if query_ceiling is None:
        return False
    cost = (d - r) * (d + REREAD_PER_LINE) + REREAD_FIXED
    return reader.oracle.queries + cost <= query_ceiling(r)


def complement(Q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Orthonormal columns spanning the orthogonal complement of Q's (orthonormal) columns."""
    d, k = Q.shape
    X = rng.standard_normal((d, d - k))
    for _ in range(2):
        X -= Q @ (Q.T @ X)
        X, _ = np.linalg.qr(X)
    return X
