"""How precise the oracle's answers are, read off the answers themselves, and what that costs W.

A service computing in float32 (or float16/bfloat16) returns numbers on that format's grid: their
float64 mantissas end in zero bits. The number of mantissa bits the value reads (v's one-token
answers) actually use bounds the answers' relative precision from below; float64 answers use all
52 of them. The rank detection tolerance and the error estimate scale with it.
"""

from __future__ import annotations

import numpy as np

FLOAT64_EPS = float(np.finfo(np.float64).eps)
# An answer's arithmetic error is a few units of its format's rounding (sums of d terms, the
# softmax); the error estimate multiplies the grid spacing by this much.
ARITHMETIC_SLACK = 8.0
# Estimated relative errors of W above this trigger a warning.
WARN_ERROR = 1e-6


def mantissa_bits(values: np.ndarray) -> int:
    """The most significant mantissa bits any of these floats uses (0..52; zeros use none)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x) & (x != 0.0)]
    if x.size == 0:
        return 52
    mantissa = (x.view(np.uint64) & np.uint64((1 << 52) - 1)).astype(np.uint64)
    used = np.zeros(x.size, dtype=np.int64)
    nonzero = mantissa != 0
    m = mantissa[nonzero]
    trailing = np.zeros(m.size, dtype=np.int64)
    for bit in range(52):  # trailing zero count, vectorised over the answers
        still = (m >> np.uint64(bit)) & np.uint64(1) == 0
        trailing += still & (trailing == bit)
    used[nonzero] = 52 - trailing
    return int(used.max())


# Answers coarser than this (float32 and below) switch low-rank reads to the oversampled fit.
COARSE_PRECISION = 1e-12
# rank="auto" on float64 answers: a dependent column's check mismatch is ~1e-13, an independent
# one's O(1); the tolerance sits in between.
FLOAT64_RANK_TOL = 1e-7


def answer_precision(answers: np.ndarray | None) -> float:
    """Relative precision of the oracle's answers, read off the raw one-token answers."""
    bits = 52 if answers is None else mantissa_bits(answers)
    return max(FLOAT64_EPS, 2.0 ** -(bits + 1))


def rank_tolerance(precision: float) -> float:
    """The rank check's tolerance: halfway (geometrically) between the reading error and O(1).

    Readings of a float32 oracle are good to ~1e-5 relative after the logit inversion and the
    check's least squares; independent columns of a random or trained head mismatch by ~1e-1.
    """
    return max(FLOAT64_RANK_TOL, 3.0 * float(np.sqrt(precision)))


def error_report(precision: float, max_abs_logit: float, d: int, info: dict | None = None) -> dict:
    """An a-priori relative error estimate for W from the answers' precision.

    The logit inversion divides an answer's error by alpha (1 - alpha) (about 4.7 at the target
    logit size 0.8, worse towards max_abs_logit), and a probe's answer sums d products, whose
    rounding grows like sqrt(d). The estimate is deliberately coarse (within ~10x of the measured
    error in benchmarks/single_head.py --precision); it is meant to flag float32/float16 oracles.
    """
    alpha = 1.0 / (1.0 + np.exp(-max(max_abs_logit, 0.8)))
    inversion = 1.0 / (alpha * (1.0 - alpha))
    estimate = float(precision * ARITHMETIC_SLACK * inversion * np.sqrt(d))
    if precision <= 4 * FLOAT64_EPS:
        estimate = max(estimate, 1e-14)
    info = info or {}
    if "fit_residual" in info:  # an oversampled fit measured its own reading error: use it
        estimate = max(info["fit_residual"], info.get("discarded_singular", 0.0))
    return {"estimated_error": estimate}
