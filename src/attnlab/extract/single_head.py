"""Exact extraction of a single softmax-attention head from value queries.

    f(X) = softmax(X W x_N)^T X v                   (affine: scores + u^T x_i, values + c)

Everything rests on two query shapes (see `probes`): one-token queries read v (and c), and the
two-token query [(a + b); b] reads one bilinear value a^T W b (+ a^T u). The methods differ in
which (a, b) pairs they ask for and how they solve for W:

- "adaptive" (default): at the information limit. W is read in the coordinates A^T W B of a
  random orthogonal B and an orthogonal A whose columns are all equally aligned with v; probe
  magnitudes are learned from the measurements already made. Full rank: every entry, d^2 + d
  queries. Rank r: r full columns and r rows chosen by pivoted QR (skeleton formula),
  2rd - r^2 + d queries, the number of free parameters. rank="auto" detects r on the fly with
  two check queries per column, 2 queries over the limit.
- "paper": Theorem 4.1 as written: d Gaussian u_k, queries [(u_k + e_j); e_j] column by
  column, no scaling. It fails loudly when the softmax saturates.
- "nuclear-norm": Theorem 5.1: Gaussian rank-one probes (scaled adaptively) and constrained
  nuclear-norm minimisation (`lowrank.nuclear_norm_recovery`).

The extractor sees only the oracle; comparing with ground truth is the caller's business.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.lowrank import cross_factors, nuclear_norm_recovery, pivot_rows
from attnlab.extract.probes import (
    BilinearReader,
    bilinear_probe,
    random_orthogonal,
    read_values,
    value_aligned_basis,
)
from attnlab.extract.result import Extraction, measure_fidelity
from attnlab.oracle import Oracle

METHODS = ("adaptive", "paper", "nuclear-norm")
# Default number of rank-one measurements for method="nuclear-norm": NUCLEAR_NORM_C * r * 2d
# (capped at d^2). benchmarks/single_head.py measures the smallest C that succeeds in >= 19 of 20
# trials at d = 40, r = 2 (1.5 there, i.e. ~1.5x the free parameters); the default keeps a margin.
NUCLEAR_NORM_C = 2.0
# rank="auto": a column is declared inside the span of the previous ones when its two check
# measurements agree with the prediction to this fraction of the typical measurement size.
RANK_TOL = 1e-7
# The fidelity check uses its own random stream so it never coincides with the probes.
FIDELITY_SEED_OFFSET = 7919


def single_head(oracle: Oracle, rank: int | str | None = None, affine: bool = False,
                method: str = "adaptive", seed: int | np.random.Generator = 0,
                measurements: int | None = None, fidelity_samples: int = 1000) -> Extraction:
    """Recover (W, v) (and u, c when `affine`) of a single attention head behind `oracle`.

    Parameters
    ----------
    oracle : Oracle
        Black-box access; its token width `oracle.d` must be set.
    rank : None, int or "auto"
        None: W of full rank. int r: rank(W) <= r is known. "auto": detect the rank.
    affine : bool
        Recover the biases u (scores) and c (output) too; costs d + 1 more queries.
    method : "adaptive", "paper" or "nuclear-norm"
    seed : int or numpy Generator
        Seeds every random probe direction.
    measurements : int, optional
        Number of rank-one measurements for method="nuclear-norm" (default NUCLEAR_NORM_C*r*2d).
    fidelity_samples : int
        Fresh random sequences (lengths 1..32) on which the recovered head is compared with the
        oracle afterwards; 0 skips the check. These queries are counted in `fidelity_queries`.

    Returns
    -------
    Extraction with params W, v (u, c), queries spent by the extraction itself, dof, and info
    (rank found, oracle calls, largest logit a probe produced, ...).
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    d = _token_width(oracle)
    rank = _check_rank(rank, d)
    if measurements is not None and method != "nuclear-norm":
        raise ValueError("measurements only applies to method='nuclear-norm'; leave it unset for "
                         f"method={method!r}")
    if fidelity_samples < 0:
        raise ValueError(f"fidelity_samples must be >= 0, got {fidelity_samples}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)

    started_queries, started = oracle.queries, time.perf_counter()
    v, c = read_values(oracle, d, affine)
    stages = {"values": oracle.queries - started_queries}
    if method == "paper":
        W, u, info = _paper(oracle, v, c, affine, rng, stages)
    else:
        reader = BilinearReader(oracle, v, c, affine)
        u = None
        if affine:
            before = oracle.queries
            basis = value_aligned_basis(v, rng)
            u = basis @ reader.read_offsets(basis.T)
            reader.u = u
            stages["bias_u"] = oracle.queries - before
        before = oracle.queries
        if method == "adaptive":
            W, info = _adaptive(reader, v, rank, rng)
        else:
            W, info = _nuclear_norm(reader, d, rank, measurements, rng)
        stages["W"] = oracle.queries - before
        info.update(oracle_calls=reader.log.calls + 1, max_abs_logit=reader.log.max_abs_logit,
                    probe_scale_range=[min(reader.log.scales), max(reader.log.scales)])
    seconds = time.perf_counter() - started
    queries = oracle.queries - started_queries

    params = {"W": W, "v": v}
    if affine:
        params.update(u=u, c=np.float64(c))
    found_rank = info.get("rank", d)
    dof = 2 * found_rank * d - found_rank ** 2 + d + (d + 1 if affine else 0)
    result = Extraction(params=params, queries=queries, method=method, dof=dof, seconds=seconds,
                        stages=stages, info=info, surrogate=head_function(W, v, u, c if affine else None))
    if fidelity_samples:
        fidelity_seed = int(rng.integers(2 ** 31)) + FIDELITY_SEED_OFFSET
        result.fidelity, result.fidelity_queries = measure_fidelity(
            oracle, result.surrogate, n=fidelity_samples, lengths=(1, 32), seed=fidelity_seed)
    return result


def head_function(W: np.ndarray, v: np.ndarray, u: np.ndarray | None = None,
                  c: float | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The head with these parameters as a numpy function of a batch (B, N, d) -> (B,)."""

    def f(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        scores = np.einsum("bnd,de,be->bn", X, W, X[:, -1, :])
        if u is not None:
            scores = scores + X @ u
        scores -= scores.max(axis=1, keepdims=True)
        weights = np.exp(scores)
        weights /= weights.sum(axis=1, keepdims=True)
        out = np.einsum("bn,bn->b", weights, X @ v)
        return out + c if c is not None else out

    return f


def _token_width(oracle: Oracle) -> int:
    if not isinstance(oracle, Oracle):
        raise TypeError(f"single_head needs an attnlab Oracle, got {type(oracle).__name__}; wrap the "
                        f"target with Oracle(target, d=...)")
    if oracle.d is None:
        raise ValueError("the oracle does not know the token width yet; create it with Oracle(target, d=d)")
    return oracle.d


def _check_rank(rank, d: int) -> int | str | None:
    if rank is None or rank == "auto":
        return rank
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be None, 'auto' or an integer in [1, {d}], got {rank!r}")
    if not 1 <= rank <= d:
        raise ValueError(f"rank must be between 1 and d = {d}, got {rank}; use rank=None for full rank")
    return None if rank == d else int(rank)


# -- method="adaptive" -------------------------------------------------------------------------

def _adaptive(reader: BilinearReader, v: np.ndarray, rank, rng: np.random.Generator):
    """Read M = A^T W B (all of it, or a cross of r columns and r rows) and map back."""
    d = v.shape[0]
    A = value_aligned_basis(v, rng)
    B = random_orthogonal(d, rng)
    a_rows, b_rows = A.T, B.T

    def read(rows, cols, line=None):
        """Entries M[rows, cols] (index arrays, or one int broadcast), read as one line."""
        return reader.read(a_rows, b_rows, rows, cols, line=line)

    def read_columns(count):
        everything = np.arange(d)
        return np.column_stack(reader.read_lines(a_rows, b_rows, [(everything, np.full(d, j)) for j in range(count)]))

    if rank is None:
        return A @ read_columns(d) @ B.T, {"rank": d, "rank_mode": "full"}
    if rank == "auto":
        (left, right), info = _auto_rank_cross(read, reader, a_rows, b_rows)
    else:
        columns = read_columns(rank)
        pivots = pivot_rows(columns)[:rank]
        left, right = _complete_rows(reader, a_rows, b_rows, columns, pivots)
        info = {"rank": rank, "rank_mode": "given"}
    return (A @ left) @ (right @ B.T), info


def _complete_rows(reader: BilinearReader, a_rows: np.ndarray, b_rows: np.ndarray, columns: np.ndarray,
                   pivots: np.ndarray, partial: np.ndarray | None = None) -> np.ndarray:
    """Read the pivot rows of the columns not yet known (one line each); return the skeleton's factors.

    `partial` (r,) optionally holds the pivot rows of column r, already read during rank detection.
    """
    d, r = columns.shape
    rows = np.empty((r, d))
    rows[:, :r] = columns[pivots]
    first = r
    if partial is not None:
        rows[:, r] = partial
        first = r + 1
    remaining = np.arange(first, d)
    if remaining.size:
        lines = [(np.full(remaining.size, row), remaining) for row in pivots]
        rows[:, first:] = np.vstack(reader.read_lines(a_rows, b_rows, lines))
    return cross_factors(columns, rows, pivots)


def _auto_rank_cross(read, reader: BilinearReader, a_rows: np.ndarray, b_rows: np.ndarray):
    """Read full columns until a new column lies in the span of the previous ones.

    Column j (with r = j independent columns so far) is read first at the r pivot rows of the
    known columns plus two check rows; if the checks match the span's prediction, the rank is r
    and those r values already belong to the row phase. Otherwise the rest of the column is read,
    so no query is wasted either way.
    """
    d = a_rows.shape[0]
    columns = np.empty((d, 0))
    everything = np.arange(d)
    for j in range(d):
        r = columns.shape[1]
        if r == 0:
            columns = read(everything, j)[:, None]
            continue
        order = pivot_rows(columns)
        checks = min(2, d - r)
        head = order[:r + checks]
        line = reader.new_line()
        head_values = read(head, j, line=line)
        coef = np.linalg.lstsq(columns[order[:r]], head_values[:r], rcond=None)[0]
        predicted = columns[order[r:r + checks]] @ coef
        mismatch = float(np.max(np.abs(head_values[r:] - predicted)))
        typical = float(np.sqrt(np.mean(columns ** 2)))
        if mismatch <= RANK_TOL * typical:
            factors = _complete_rows(reader, a_rows, b_rows, columns, order[:r], partial=head_values[:r])
            return factors, {"rank": r, "rank_mode": "auto", "rank_check_mismatch": mismatch / typical}
        column = np.empty(d)
        column[head] = head_values
        rest = order[r + checks:]
        if rest.size:
            column[rest] = read(rest, j, line=line)
        columns = np.column_stack([columns, column])
    return (columns, np.eye(d)), {"rank": d, "rank_mode": "auto"}


# -- method="paper" ----------------------------------------------------------------------------

def _paper(oracle: Oracle, v: np.ndarray, c: float, affine: bool, rng: np.random.Generator,
           stages: dict) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """Theorem 4.1 as written: Gaussian u_k, query token e_j, one oracle call per column."""
    d = v.shape[0]
    U = rng.standard_normal((d, d))  # rows are the u_k
    calls = 1
    u = None
    if affine:
        before = oracle.queries
        u = np.linalg.solve(U, bilinear_probe(oracle, U, np.zeros_like(U), v, c))
        stages["bias_u"] = oracle.queries - before
        calls += 1
    before = oracle.queries
    T = np.empty((d, d))
    eye = np.eye(d)
    max_logit = 0.0
    for j in range(d):
        T[:, j] = bilinear_probe(oracle, U, np.tile(eye[j], (d, 1)), v, c)
        max_logit = max(max_logit, float(np.max(np.abs(T[:, j]))))
        calls += 1
    stages["W"] = oracle.queries - before
    if affine:
        T -= (U @ u)[:, None]
    W = np.linalg.solve(U, T)
    return W, u, {"rank": d, "rank_mode": "full", "oracle_calls": calls, "max_abs_logit": max_logit,
                  "design_condition": float(np.linalg.cond(U))}


# -- method="nuclear-norm" ---------------------------------------------------------------------

def _nuclear_norm(reader: BilinearReader, d: int, rank, measurements: int | None,
                  rng: np.random.Generator):
    if measurements is None:
        if rank == "auto":
            raise ValueError("method='nuclear-norm' with rank='auto' needs measurements=K: the number of "
                             "rank-one measurements must be fixed before the rank is known")
        measurements = d * d if rank is None else min(d * d, math.ceil(NUCLEAR_NORM_C * rank * 2 * d))
    if not 1 <= measurements <= d * d:
        raise ValueError(f"measurements must be between 1 and d^2 = {d * d}, got {measurements}")
    a = rng.standard_normal((measurements, d)) / np.sqrt(d)
    b = rng.standard_normal((measurements, d)) / np.sqrt(d)
    y = reader.read(a, b)
    info = {"measurements": measurements}
    if measurements == d * d:
        # as many generic measurements as entries: the constraints alone pin W down
        design = np.einsum("kd,ke->kde", a, b).reshape(measurements, d * d)
        W = np.linalg.solve(design, y).reshape(d, d)
        info.update(rank=d if rank in (None, "auto") else rank, solver="linear")
        return W, info
    W, report = nuclear_norm_recovery(a, b, y, rank=rank if isinstance(rank, int) else None)
    info.update(rank=report.rank if rank in (None, "auto") else rank, rank_found=report.rank,
                solver="admm+gauss-newton", iterations=report.iterations,
                polish_steps=report.polish_steps, relative_residual=report.residual)
    return W, info
