"""method="adaptive": W read at the information limit, in structured coordinates.

Every query pairs one column a_i of the value-aligned orthogonal basis A (`AlignedBasis`, O(d)
to hold) with one direction b, and reads a_i^T W b.

- Full rank: b runs over the standard basis, so the d^2 readings are M = A^T W and W = A M
  (A is a rank-2 correction of the identity: O(d^2) to apply, no d x d basis is ever formed).
- Rank r: r random orthonormal directions Q = [q_1..q_r] give the columns C = A^T W Q (r d
  queries), here with A the shifted coordinates a_i = e_i + s (`ShiftedCoordinates`: value
  aligned, not orthogonal), so that a query's first token is one kept row plus one entry.
  Pivoted QR of C picks r rows P; the rows w_p = W^T a_p (p in P) are known on span(Q) already
  (w_p . q_j = C[p, j]) and are read in d - r standard coordinates S, the complement of r
  coordinates T on which Q is well conditioned; the rest is one r x r solve per row. Then
  W = A^{-T} C C[P]^{-1} R with R the r x d rows (skeleton formula): d + r d + r (d - r)
  queries, exactly the free parameters, in O(r d) memory besides the d x d result.
- rank="auto": columns are read one at a time, each first at the r known pivot rows plus two
  check rows; when the checks match the span of the previous columns the rank is r, and those r
  values count as one more known direction for the rows. Two queries over the limit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.single_head.coarse_rank import (
    COARSE_CHECKS,
    RANK_EDGE_Z,
    RANK_NOISE_TOL,
    REREAD_FIXED,
    REREAD_PER_LINE,
    full_read_affordable,
    read_columns,
    read_the_rest,
)
from attnlab.extract.single_head.directions import (
    AlignedBasis,
    CoordinateDirections,
    DenseDirections,
    ShiftedCoordinates,
    random_orthonormal_columns,
)
from attnlab.extract.single_head.lowrank import cross_factors, pivot_rows
from attnlab.extract.single_head.precision import (
    PrecisionReader,
    dependence_statistic,
    joint_fit,
    noise_from_column,
    paired_full_read,
)
from attnlab.extract.single_head.reader import BilinearReader

# rank="auto": a column is declared inside the span of the previous ones when its two check
# measurements agree with the prediction to this fraction of the typical measurement size
# (float64 answers; a coarser answer precision raises it, see `precision`).
RANK_TOL = 1e-7


def adaptive(
    reader: BilinearReader,
    A: AlignedBasis,
    rank,
    rng: np.random.Generator,
    rank_tol: float = RANK_TOL,
    oversample: bool = False,
    query_ceiling: Callable[[int], int] | None = None,
    read_noise: float | None = None,
):
    """(W, info) for rank None (full), an int r, or "auto".

    `oversample` (for coarse answers, e.g. float32): low-rank W is read with up to twice the
    limit's queries (`query_ceiling(r)`: the oracle's query count not to pass at rank r), r + p columns and r + p full rows, and fitted by least squares (see
    `oversampled`), instead of exactly at the limit.
    """
    if rank is None:
        if oversample and isinstance(reader, PrecisionReader):
            # coarse answers: every entry read twice, along b and -b
            W, noise = paired_full_read(reader, A, rng)
            return W, {"rank": A.d, "rank_mode": "full-paired", "read_noise": noise}
        return full_rank(reader, A), {"rank": A.d, "rank_mode": "full"}
    if rank == "auto":
        return auto_rank(reader, A, rng, rank_tol, oversample, query_ceiling, read_noise)
    Q = random_orthonormal_columns(A.d, rank, rng)
    if oversample and rank < A.d:
        C = read_columns(reader, A, Q)
        W, fit = oversampled(reader, A, Q, C, rank, rng, query_ceiling)
        return W, {"rank": rank, "rank_mode": "known", **fit}
    # the skeleton needs no general position: shifted coordinates, whose column reads write one
    # entry per query instead of a dense row
    S = ShiftedCoordinates(reader.v)
    C = read_columns(reader, S, Q)
    W = complete(reader, S, Q, C, pivot_rows(C)[:rank])
    return W, {"rank": rank, "rank_mode": "known"}


def extra_columns(d: int, r: int, left: int | None = None) -> int:
    """Oversampling p: r + p columns and r + p rows, re-reads included, within twice the limit.

    `left`: the queries still allowed (the oracle's count up to twice the exact limit); the
    oversampled read costs p more columns and r + p rows of d readings each, plus the reader's
    re-reads. Without it, the W part of the limit (2rd - r^2) is doubled.
    """
    budget = 2 * (2 * r * d - r * r) + d if left is None else left
    p = max(0, min(d - r, 2 * r))
    while p > 0 and (r + 2 * p) * (d + REREAD_PER_LINE) + REREAD_FIXED > budget:
        p -= 1
    return p


def oversampled(
    reader: BilinearReader,
    A: AlignedBasis,
    Q: np.ndarray,
    C: np.ndarray,
    r: int,
    rng: np.random.Generator,
    query_ceiling: Callable[[int], int] | None = None,
    read_noise: float | None = None,
):
    """Rank-r W from r + p columns and r + p rows read in full, by truncated SVD and least squares.

    With answers only good to ~1e-7 (float32), the skeleton formula's r x r core amplifies their
    errors ~20x; p extra columns give the column space by a truncated SVD (which averages the
    errors) and p extra rows make the row fit an overdetermined, well-conditioned least squares.
    The discarded singular values and the fit's residual measure the reading error itself.

    `read_noise` (rank="auto"): r is a lower bound from the column-by-column check; the rank is
    then the number of singular values of all r + p columns above the noise edge (a d x n
    matrix of independent errors sigma has singular values up to sigma (sqrt d + sqrt n)). The
    last directions of a random column set are nearly collinear (a k x (k-1) Gaussian matrix is
    ill-conditioned), so the check can stop a few short; the p extra columns see them clearly.
    """
    d = A.d
    left = None if query_ceiling is None else query_ceiling(r) - reader.oracle.queries
    p = extra_columns(d, r, left)
    for _ in range(p):
        Q = np.column_stack([Q, _next_direction(Q, rng)])
    if p:
        C = np.column_stack([C, read_columns(reader, A, Q[:, C.shape[1] :])])
    U, s, _ = np.linalg.svd(C, full_matrices=False)
    fit: dict = {}
    if read_noise is not None:
        edge = RANK_EDGE_Z * read_noise * float(np.sqrt(np.mean(C**2)))
        edge *= float(np.sqrt(d) + np.sqrt(C.shape[1]))
        above = int(np.sum(s > edge))
        fit.update(noise_edge=float(edge / s[0]), rank_check_found=r)
        # the relative singular values around the rank, for the record (how clear the cut was)
        fit["singular_values"] = [float(x) for x in s[max(0, r - 2) : r + 4] / s[0]]
        # the spectrum decides both ways: the check can stop short (nearly collinear last
        # columns) and be fooled by the errors' structure (a dependent column whose misfit is
        # 2x the model's: its singular value sits at 2x the edge, in the noise)
        r = max(1, min(above, C.shape[1]))
        fit["rank"] = r
    basis = U[:, :r]  # the column space of A^T W, in A's coordinates
    n_rows = min(d, r + p)
    if query_ceiling is not None:
        affordable = (query_ceiling(r) - reader.oracle.queries - REREAD_FIXED) // (
            d + REREAD_PER_LINE
        )
        n_rows = max(r, min(n_rows, int(affordable)))
    rows = pivot_rows(basis)[:n_rows]
    R = np.vstack(
        reader.read_lines(A, CoordinateDirections(d), [(int(i), np.arange(d)) for i in rows])
    )
    X = joint_fit(basis, Q, C, basis[rows], R)  # A^T W = basis X
    residual = float(np.linalg.norm(basis[rows] @ X - R) / np.linalg.norm(R))
    tail = float(s[r] / s[0]) if s.size > r else 0.0
    return A.apply(basis) @ X, {
        **fit,
        "oversampled": int(p),
        "fit_residual": residual,
        "discarded_singular": tail,
    }


def full_rank(reader: BilinearReader, A: AlignedBasis) -> np.ndarray:
    d = A.d
    everything = np.arange(d)
    lines = [(everything, j) for j in range(d)]
    Mt = np.empty((d, d))  # row j: column j of M = A^T W
    for j, column in enumerate(reader.read_lines(A, CoordinateDirections(d), lines)):
        Mt[j] = column
    # W = A M, i.e. W^T = M^T A^T = Mt - 2 (Mt g) g^T - 2 (Mt w) q^T, in place, a block of rows
    # at a time so that no second d x d array is formed
    step = max(1, (1 << 22) // (8 * d))
    for first in range(0, d, step):
        block = Mt[first : first + step]
        on_g, on_w = block @ A.g, block @ A.w
        block -= 2.0 * np.outer(on_g, A.g)
        block -= 2.0 * np.outer(on_w, A.q)
    return Mt.T


def complete(
    reader: BilinearReader,
    A: AlignedBasis | ShiftedCoordinates,
    Q: np.ndarray,
    C: np.ndarray,
    pivots: np.ndarray,
    partial: np.ndarray | None = None,
) -> np.ndarray:
    """Read the rows w_p = W^T a_p (p in pivots) and return W by the skeleton formula.

    Q (d, k) are the directions along which every w_p is already known: w_p . Q[:, j] = C[p, j]
    for j < r, and = partial[p-th] for j = r (the column read at the pivots during rank detection).
    """
    d, r = C.shape
    known = C[pivots] if partial is None else np.column_stack([C[pivots], partial])
    k = known.shape[1]
    Q = Q[:, :k]
    T = pivot_rows(Q)[:k]  # coordinates on which Q is best conditioned
    S = np.setdiff1d(np.arange(d), T)
    R = np.empty((r, d))
    if S.size:
        rows = reader.read_lines(A, CoordinateDirections(d), [(int(p), S) for p in pivots])
        R[:, S] = np.vstack(rows)
    # w_p[T] solves Q[T]^T w_p[T] = known_p - Q[S]^T w_p[S]
    rhs = known - R[:, S] @ Q[S]
    try:
        R[:, T] = np.linalg.solve(Q[T].T, rhs.T).T
    except np.linalg.LinAlgError:
        raise ExtractionError(
            "the known probe directions are degenerate on every coordinate set; "
            "this should not happen with random directions: re-run with another seed"
        ) from None
    left, right = cross_factors(C, R, pivots)
    return A.recover(left) @ right


def auto_rank(
    reader: BilinearReader,
    A: AlignedBasis,
    rng: np.random.Generator,
    rank_tol: float,
    oversample: bool = False,
    query_ceiling: Callable[[int], int] | None = None,
    read_noise: float | None = None,
):
    """Read columns until one lies in the span of the previous ones (see the module docstring).

    `read_noise` (coarse answers): the least relative error of one reading (of its line's
    spread); the first column measures it (`noise_from_column`). The check then fits the new
    column at COARSE_CHECKS rows more than the pivots and compares the misfit with the noise it
    would have if dependent (`dependence_statistic`), instead of a fixed tolerance; a dependence
    must be confirmed by a second direction; the oversampled columns' spectrum has the last word
    (`oversampled`). Once the rank found so far makes a full read affordable within
    `query_ceiling` (the low-rank read would save little), the remaining columns are read in
    full, the rank is the number of singular values above RANK_EDGE_Z x the noise edge, and W
    the truncation at the edge itself.
    """
    d = A.d
    everything = np.arange(d)
    Q = np.empty((d, 0))
    columns = np.empty((d, 0))
    scales: list[float] = []  # the scale each column's line settled at (coarse answers)
    worst_independent = np.inf  # smallest mismatch (or z) of a column found independent
    # coarse answers: a column that looked dependent, kept until a second one confirms it
    suspect: tuple | None = None
    dense_checks = 0  # queries spent confirming dependence along dense directions
    while columns.shape[1] < d:
        r = columns.shape[1]
        if (
            read_noise is not None
            and suspect is None
            and 0 < r < d
            and full_read_affordable(reader, d, r, query_ceiling)
        ):
            W, info = read_the_rest(reader, A, Q, columns, rng, read_noise, query_ceiling)
            return W, {**info, "rank_switch": r, "rank_margin": worst_independent}
        q = _next_direction(Q, rng)
        Q = np.column_stack([Q, q])
        b = DenseDirections(q[None, :])
        line = reader.new_line()
        if r == 0:
            columns = reader.read(A, b, everything, 0, line=line)[:, None]
            scales.append(line.scale)
            if read_noise is not None:  # coarse: the given value is a floor; measure it here
                read_noise = max(read_noise, noise_from_column(reader, A, q, columns[:, 0], line))
            continue
        order = pivot_rows(columns)
        checks = min(2 if read_noise is None else COARSE_CHECKS, d - r)
        head = order[: r + checks]
        head_values = reader.read(A, b, head, 0, line=line)
        if read_noise is None:
            coef = np.linalg.lstsq(columns[order[:r]], head_values[:r], rcond=None)[0]
            predicted = columns[order[r : r + checks]] @ coef
            typical = float(np.sqrt(np.mean(columns**2)))
            mismatch = float(np.max(np.abs(head_values[r:] - predicted))) / typical
            tol = rank_tol
        else:
            mismatch = dependence_statistic(
                head_values, columns[head], scales, line.scale, read_noise
            )
            tol = RANK_NOISE_TOL
        if mismatch <= tol and read_noise is None:
            # the check rows come next in the previous columns' pivot order, so a new column
            # whose part outside their span sits on rows they barely use (a sparse W: one spike
            # per row) slips past them (d = 16, rank 8: found 7, W 1.4e-4 off, silently). Two
            # dense directions see any such part: 2 queries, only when a column looks dependent
            mismatch = max(mismatch, _dense_check(reader, A, b, line, columns, coef, rng))
            dense_checks += DENSE_CHECKS
        if mismatch <= tol and read_noise is not None and suspect is None and r + 1 < d:
            # a random direction can fall close to the span by chance (the last few of a
            # rank-32 head did, 1.7% of the column outside it): a fresh one must agree
            suspect = (b, line, head, head_values)
            continue
        if mismatch <= tol:
            info = {
                "rank": r,
                "rank_mode": "auto",
                "rank_check_mismatch": mismatch,
                "rank_tol": tol,
                **({} if read_noise is None else {"read_noise": read_noise}),
                "rank_margin": worst_independent / tol,
                **({"dense_check_queries": dense_checks} if read_noise is None else {}),
            }
            if oversample:
                W, fit = oversampled(
                    reader, A, Q[:, :r], columns, r, rng, query_ceiling, read_noise
                )
                return W, {**info, **fit}
            W = complete(reader, A, Q, columns, order[:r], partial=head_values[:r])
            return W, info
        worst_independent = min(worst_independent, mismatch)
        if suspect is not None:  # this column is independent, so the suspect was one too
            columns = np.column_stack([columns, _finish(reader, A, d, *suspect)])
            scales.append(suspect[1].scale)
            suspect = None
        columns = np.column_stack([columns, _finish(reader, A, d, b, line, head, head_values)])
        scales.append(line.scale)
    # full rank: columns = A^T W Q with Q orthogonal, so W = A columns Q^T
    return A.apply(columns) @ Q.T, {
        "rank": d,
        "rank_mode": "auto",
        "rank_tol": rank_tol,
        "rank_margin": worst_independent / rank_tol,
        "dense_check_queries": dense_checks,
    }


def _finish(reader, A, d: int, b, line, head, head_values) -> np.ndarray:
    """A column read at the rows `head` so far, read at the others too (on the same line)."""
    column = np.empty(d)
    column[head] = head_values
    rest = np.setdiff1d(np.arange(d), head)
    if rest.size:
        column[rest] = reader.read(A, b, rest, 0, line=line)
    return column


# Dense directions that confirm a column's dependence (rank="auto", float64 answers).
DENSE_CHECKS = 2


def _dense_check(reader, A, b, line, columns, coef, rng) -> float:
    """The new column's mismatch with the span of the previous ones along DENSE_CHECKS random
    directions g (each with g^T v >= |v|), relative to the typical measurement size."""
    v = reader.v
    v_hat = v / np.linalg.norm(v)
    Z = rng.standard_normal((DENSE_CHECKS, A.d))
    Z /= np.linalg.norm(Z, axis=1, keepdims=True)
    G = Z + np.sign(Z @ v_hat)[:, None] * v_hat  # aligned with v, whatever v
    values = reader.read(DenseDirections(G), b, np.arange(DENSE_CHECKS), 0, line=line)
    previous = A.apply(columns)  # W Q (A orthogonal), so g^T W Q for any g
    predicted = (G @ previous) @ coef
    typical = float(np.sqrt(np.mean(columns**2))) * float(np.mean(np.linalg.norm(G, axis=1)))
    return float(np.max(np.abs(values - predicted))) / typical


def _next_direction(Q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random unit vector orthogonal to the columns of Q (Gram-Schmidt, twice for stability)."""
    q = rng.standard_normal((Q.shape[0],))
    for _ in range(2):
        if Q.shape[1]:
            q -= Q @ (Q.T @ q)
        q /= np.linalg.norm(q)
    return q
