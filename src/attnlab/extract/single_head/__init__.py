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
  two check queries per column, confirmed by two dense checks: 4 queries over the limit.
- "paper": Theorem 4.1 as written: d Gaussian u_k, queries [(u_k + e_j); e_j] column by
  column, no scaling. It fails loudly when the softmax saturates.
- "nuclear-norm": Theorem 5.1: Gaussian rank-one probes (scaled adaptively) and constrained
  nuclear-norm minimisation (`lowrank.nuclear_norm_recovery`).

The adaptive reader survives targets aimed at its scaling (docs/extraction.md, "Repairs"): a
reading that saturates or exceeds SAFE_LOGIT is read again smaller (info['repaired_queries']),
entries read far below their line's settled scale are read again at it
(info['rescaled_queries']), and a coarse-looking v costs one generic query
(stages['precision_check']); generic heads of ordinary size need none of these, so they stay
exactly at the limit.

Coarse answers (float32, float16/bfloat16 services: `precision.answer_precision` reads the
format off the one-token answers) switch to `precision.PrecisionReader` (long a, short b, warm-up
entries read again) and, for low rank, the oversampled fit; rank="auto" judges dependence by
the reading noise measured from the answers (32 entries read along b and -b). They spend up to
twice the exact limit, report info['estimated_error'] (and info['read_noise']) and raise
PrecisionWarning above 1e-5 (benchmarks/results/precision.md: float32 heads reach W errors of
0.6e-6 to 2e-6, float16 heads 2e-3 to 4e-3, ranks found, <= 2x the limit).

The extractor sees only the oracle; comparing with ground truth is the caller's business.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from attnlab._random import as_generator
from attnlab.extract.convention import resolve_method, warn_if_noisy
from attnlab.extract.result import Extraction
from attnlab.extract.single_head.adaptive import adaptive
from attnlab.extract.single_head.baselines import NUCLEAR_NORM_C, nuclear_norm, paper  # noqa: F401 (re-export)
from attnlab.extract.single_head.directions import AlignedBasis
from attnlab.extract.single_head.precision import (
    COARSE_PRECISION,
    READ_NOISE_FACTOR,
    WARN_ERROR,
    WARN_ERROR_FLOAT64,
    PrecisionReader,
    answer_precision,
    error_report,
    generic_answers,
    rank_tolerance,
    reading_noise,
)
from attnlab.extract.single_head.probes import ProbeLog, read_values
from attnlab.extract.single_head.reader import BilinearReader, default_chunk
from attnlab.oracle import Oracle


class PrecisionWarning(UserWarning):
    """The oracle's answers are too coarse (float32/float16) for W to be exact to float64."""


METHODS = ("adaptive", "paper", "nuclear-norm")
# The options each method takes in `method_options`, with their defaults.
METHOD_OPTIONS: dict[str, dict] = {
    # chunk: queries written and sent per oracle call (memory O(chunk d)); default ~4 MiB of them.
    # precision: the answers' relative precision; None estimates it from the answers themselves.
    "adaptive": {"chunk": None, "precision": None},
    "paper": {},
    "nuclear-norm": {"measurements": None, "chunk": None},
}
# The fidelity check uses its own random stream so it never coincides with the probes.
FIDELITY_SEED_OFFSET = 7919


def single_head(
    oracle: Oracle,
    *,
    rank: int | str | None = None,
    affine: bool = False,
    method: str = "adaptive",
    method_options: dict | None = None,
    seed: int | np.random.Generator | None = 0,
    fidelity_samples: int = 1000,
    progress: bool = False,
) -> Extraction:
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
    method_options : dict, optional
        adaptive: `chunk` (queries per oracle call; the learner holds O(chunk d) of queries),
        `precision` (relative precision of the answers, e.g. 6e-8 for a float32 service; by
        default estimated from the answers). nuclear-norm: `measurements` (rank-one
        measurements, default NUCLEAR_NORM_C*r*2d), `chunk`.
    seed : int, None or numpy Generator
        Seeds every random probe direction (attnlab._random.as_generator).
    fidelity_samples : int
        Fresh random sequences (lengths 1..32) on which the recovered head is compared with the
        oracle afterwards; 0 skips the check. These queries are counted in `fidelity_queries`.
    progress : bool
        Unused by this extractor (it makes a handful of stages); accepted for the convention.

    Returns
    -------
    Extraction with params W, v (u, c), queries spent by the extraction itself, dof, and info
    (rank found, oracle calls, `oracle_seconds` spent waiting on the oracle, the answers'
    estimated precision and the resulting error estimate, ...).
    """
    options = resolve_method(method, method_options, METHOD_OPTIONS)
    d = oracle.require_d("single_head")
    warn_if_noisy(oracle, "single_head")
    rank = _check_rank(rank, d)
    if not isinstance(fidelity_samples, (int, np.integer)) or fidelity_samples < 0:
        raise ValueError(f"fidelity_samples must be a whole number >= 0, got {fidelity_samples!r}")
    chunk = options.get("chunk")
    if chunk is not None and (
        isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1
    ):
        raise ValueError(
            f"method_options['chunk'] must be a whole number >= 1 (queries per oracle "
            f"call), got {chunk!r}"
        )
    chunk = None if chunk is None else int(chunk)
    rng = as_generator(seed)

    started_queries, started = oracle.queries, time.perf_counter()
    log = ProbeLog()
    v, c = read_values(oracle, d, affine, log, chunk=chunk or default_chunk(d, oracle))
    stages = {"values": oracle.queries - started_queries}
    precision_info: dict = {}
    coarse = False
    if method == "paper":
        W, u, info = paper(oracle, v, c, affine, rng, stages, log)
    else:
        precision = options.get("precision") if method == "adaptive" else None
        if method == "adaptive" and precision is None:
            precision = answer_precision(log.value_answers)
            if precision > COARSE_PRECISION:
                # coarse-looking values may be a float64 head's short v entries: one generic
                # answer tells (one query, only here)
                before = oracle.queries
                check = generic_answers(oracle, d, log)
                precision = answer_precision(np.concatenate([log.value_answers, check]))
                stages["precision_check"] = oracle.queries - before
        coarse = precision is not None and precision > COARSE_PRECISION
        reader = (PrecisionReader if coarse else BilinearReader)(
            oracle, v, c, affine, chunk=chunk, log=log
        )
        A = AlignedBasis(v, rng)
        u = None
        if affine:
            before = oracle.queries
            u = A.apply(reader.read_offsets(A)[:, None])[:, 0]
            reader.u = u
            stages["bias_u"] = oracle.queries - before
        before = oracle.queries
        if method == "adaptive":
            assert precision is not None
            precision_info["answer_precision"] = precision
            read_noise = None
            if coarse:
                # measured, not modelled (float32 readings carry ~20 units of rounding, float16
                # ~5-8): rank="auto" measures it on its first column, a full read here; this is
                # the least it can be
                read_noise = reading_noise(precision) / READ_NOISE_FACTOR
            W, info = adaptive(
                reader,
                A,
                rank,
                rng,
                rank_tol=rank_tolerance(precision),
                oversample=coarse,
                query_ceiling=lambda r: started_queries + 2 * exact_limit(d, r, affine, rank),
                read_noise=read_noise,
            )
            if isinstance(reader, PrecisionReader):
                info["reread_queries"] = reader.rereads
        else:
            W, info = nuclear_norm(reader, d, rank, options["measurements"], rng)
        stages["W"] = oracle.queries - before
        info.update(
            max_abs_logit=log.max_abs_logit,
            probe_scale_range=[log.scale_min, log.scale_max],
            probe_imbalance=log.imbalance,
            probe_imbalance_mean=log.mean_imbalance,
        )
    info.update(oracle_calls=log.calls, oracle_seconds=log.oracle_seconds)
    if log.rescaled:
        # entries read far below their line's settled scale (W far from unit size), read again
        info.update(rescaled_queries=log.rescaled)
    if log.repaired:
        # entries whose first probe saturated or read a logit beyond SAFE_LOGIT, read again
        info.update(repaired_queries=log.repaired, saturated_probes=log.saturated)
    seconds = time.perf_counter() - started
    queries = oracle.queries - started_queries

    params: dict[str, Any] = {"W": W, "v": v}
    if affine:
        params.update(u=u, c=np.float64(c))
    found_rank = info.get("rank", d)
    dof = 2 * found_rank * d - found_rank**2 + d + (d + 1 if affine else 0)
    if precision_info:
        info.update(precision_info)
        info.update(error_report(precision_info["answer_precision"], log.max_abs_logit, d, info))
        if info["estimated_error"] > (WARN_ERROR if coarse else WARN_ERROR_FLOAT64):
            imbalance = float(info.get("probe_imbalance") or 0.0)
            why = (
                f"the probes are imbalanced (info['probe_imbalance'] = {imbalance:.1e}: the score "
                f"bias u dwarfs W, so each probe's first token is short and its answer is mostly "
                f"the second token's value)"
                if not coarse
                else f"the oracle's answers carry about {precision_info['answer_precision']:.1e} "
                f"relative precision (float32/float16 arithmetic?)"
            )
            warnings.warn(
                f"single_head: {why}, so W is only good to about {info['estimated_error']:.1e} "
                f"relative (info['estimated_error'], an a-priori bound)",
                PrecisionWarning,
                stacklevel=2,
            )
    surrogate = head_function(W, v, u, c if affine else None)
    result = Extraction(
        params=params,
        queries=queries,
        method=method,
        dof=dof,
        seconds=seconds,
        stages=stages,
        info=info,
        surrogate=surrogate,
    )
    fidelity_seed = int(rng.integers(2**31)) + FIDELITY_SEED_OFFSET
    result.check_fidelity(oracle, fidelity_samples, fidelity_seed)
    if method == "adaptive" and not coarse:
        _check_hidden_precision(result, v, rank if isinstance(rank, int) else None)
    return result


# Float64-format answers of an exact float64 head agree with the recovered head to ~1e-14 of |v|
# on fresh sequences (3e-14 at most over the adapter tests); a kernel that computes its softmax
# in float32 and returns float64 (Llama's eager kernel) leaves ~1e-6. Between the two: a hidden
# coarser arithmetic, which the mantissas cannot show and which can put W off by far more than
# the outputs are (small logits hide W).
HIDDEN_PRECISION_FIDELITY = 1e-10


def _check_hidden_precision(result: Extraction, v: np.ndarray, rank: int | None = None) -> None:
    """Warn when float64-looking answers disagree with the exact head recovered from them.

    `rank`: the rank the caller declared; a W of higher rank read as rank r disagrees the same
    way (the skeleton is exact only for rank <= r), so the warning names that cause too."""
    scale = float(np.linalg.norm(v))
    if result.fidelity is None or scale == 0.0:
        return
    relative = result.fidelity / scale
    result.info["fidelity_over_v"] = relative
    if relative <= HIDDEN_PRECISION_FIDELITY:
        return
    # the a-priori estimate assumed float64 arithmetic; it does not hold
    result.info["estimated_error"] = None
    result.info["hidden_precision"] = relative
    declared = (
        f"W has rank above the rank={rank} declared (a rank-{rank} read of a higher-rank W is "
        f"wrong; use rank='auto' to find it, or rank=None), or "
        if rank is not None
        else ""
    )
    warnings.warn(
        f"single_head: the answers look like float64, but on fresh sequences they differ from the "
        f"recovered head by {relative:.1e} of |v| (an exact float64 head agrees to ~1e-14): "
        f"{declared}the black box computes part of its arithmetic in lower precision (e.g. a float32 softmax, as "
        f"Llama's eager kernel does) or is not one softmax head, and W may be off by much more "
        f"than that. Re-run with method_options={{'precision': 6e-8}} (float32; the arithmetic's "
        f"unit roundoff) to read at that precision with an error estimate",
        PrecisionWarning,
        stacklevel=2,
    )


def head_function(
    W: np.ndarray, v: np.ndarray, u: np.ndarray | None = None, c: float | None = None
) -> Callable[[np.ndarray], np.ndarray]:
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


def exact_limit(d: int, r: int, affine: bool, rank) -> int:
    """The exact (float64) path's queries at rank r: the free parameters, + 2 check rows and 2
    dense checks for "auto" (the column found dependent)."""
    return 2 * r * d - r * r + d + (d + 1 if affine else 0) + (4 if rank == "auto" else 0)


def _check_rank(rank, d: int) -> int | str | None:
    if rank is None or rank == "auto":
        return rank
    if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)):
        raise ValueError(f"rank must be None, 'auto' or an integer in [1, {d}], got {rank!r}")
    if not 1 <= rank <= d:
        raise ValueError(
            f"rank must be between 1 and d = {d}, got {rank}; use rank=None for full rank"
        )
    return None if rank == d else int(rank)
