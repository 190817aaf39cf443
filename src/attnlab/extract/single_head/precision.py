"""How precise the oracle's answers are, read off the answers themselves, and what that costs W.

A service computing in float32 (or float16/bfloat16) returns numbers on that format's grid: their
float64 mantissas end in zero bits. The number of mantissa bits the value reads (v's one-token
answers) actually use bounds the answers' relative precision from below; float64 answers use all
52 of them. The rank detection tolerance and the error estimate scale with it.
"""

from __future__ import annotations

import numpy as np

from attnlab.extract.single_head.probes import TARGET_LOGIT_STD, ScaleTracker, invert_probes
from attnlab.extract.single_head.reader import BilinearReader

FLOAT64_EPS = float(np.finfo(np.float64).eps)
# An answer's arithmetic error is a few units of its format's rounding (sums of d terms, the
# softmax); the error estimate multiplies the grid spacing by this much.
ARITHMETIC_SLACK = 8.0
# Estimated relative errors of W above this trigger a warning: float32 answers read at their
# floor (~1e-6) pass, float16/bfloat16 (~1e-3 and worse) and badly conditioned reads warn.
WARN_ERROR = 1e-5


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
    """The rank check's tolerance: 3 sqrt(precision), between a dependent and an independent column.

    A column inside the span of the previous ones mismatches its two checks by about 100x the
    precision (measured: 5.5e-6 on float32 answers, 6.5e-2 on float16); an independent column
    of a random or trained head by ~0.2 or more. float32: 7e-4 sits 100x from both. float16:
    the two are only ~3x apart, so rank="auto" is not reliable there (give the rank); this
    tolerance errs towards a larger rank (W stays at the floor, queries grow) rather than a
    smaller one (W wrong by the dropped part: 0.33 measured at d = 384).
    """
    return max(FLOAT64_RANK_TOL, 3.0 * float(np.sqrt(precision)))


def error_report(precision: float, max_abs_logit: float, d: int, info: dict | None = None) -> dict:
    """A relative error estimate for W from the answers' precision (and the fit, where there is one).

    Exact (float64) answers: the a-priori bound of the logit inversion, which divides an answer's
    error by alpha (1 - alpha), over a probe's d rounded products (coarse; meant as a floor).
    Coarse answers: a reading of the precision-aware reader is good to about
    COARSE_READ_ERROR x precision (measured on float32 heads, d = 32..384, with biases), and an
    oversampled low-rank fit measures its own reading error (the fit residual and the discarded
    singular values), which under-states the error of W by ~2-3x (COARSE_FIT_FACTOR).
    """
    info = info or {}
    if precision > COARSE_PRECISION:
        estimate = COARSE_READ_ERROR * precision
        if info.get("oversampled"):
            measured = max(info.get("fit_residual", 0.0), info.get("discarded_singular", 0.0))
            estimate = max(COARSE_FIT_FACTOR * measured, estimate / 4.0)
        return {"estimated_error": float(estimate)}
    alpha = 1.0 / (1.0 + np.exp(-max(max_abs_logit, 0.8)))
    inversion = 1.0 / (alpha * (1.0 - alpha))
    estimate = float(precision * ARITHMETIC_SLACK * inversion * np.sqrt(d))
    if precision <= 4 * FLOAT64_EPS:
        estimate = max(estimate, 1e-14)
    return {"estimated_error": estimate}


# Coarse answers: W's relative error per unit of answer precision, and what the oversampled fit's
# own residual under-states (both measured: benchmarks/precision.py, float32 rows).
COARSE_READ_ERROR = 20.0
COARSE_FIT_FACTOR = 2.5

# Coarse answers: the query token b is kept this many times shorter than a (|a| / |b| = 16).
# The answer's rounding is relative to its size, b^T v + c + alpha a^T v; a long a puts most of
# it on the alpha a^T v term that carries W, and a short b keeps the target's own float32 score
# cancellation small (measured on float32 BERT heads: per-reading error 1.8e-5 at |a| = |b|,
# 8e-6 to 1e-5 at 16:1 to 100:1; saturation beyond).
COARSE_SPLIT = 4.0
# Coarse answers: an entry read while its line's scale was below this fraction of the scale of
# the line's last block (the cautious warm-up queries, logits ~1% of the target size) is read again at
# the final scale; at float32 those few entries were ~100x less accurate than the rest and
# dominated the error of W.
REREAD_BELOW = 0.25


class RecordingTracker(ScaleTracker):
    """A ScaleTracker that remembers at which scale each block of its line was read."""

    def __init__(self, initial: float):
        super().__init__(initial)
        self.blocks: list[tuple[int, int, float]] = []  # (first entry, entries, scale)

    def observe(self, unit_values: np.ndarray) -> None:
        self.blocks.append((self.count, int(np.size(unit_values)), self.scale))
        super().observe(unit_values)


class PrecisionReader(BilinearReader):
    """A BilinearReader for coarse (float32/float16) answers.

    Same probes and stages, two differences: a long a and a short b (`COARSE_SPLIT`), and the
    warm-up entries of every line read again at the line's final scale (`REREAD_BELOW`): about
    5 more queries per line.
    """

    rereads = 0

    def new_line(self) -> ScaleTracker:
        base = super().new_line()
        return RecordingTracker(base.scale)

    def read_lines(self, a_dirs, b_dirs, lines, trackers=None):
        trackers = list(trackers) if trackers else [self.new_line() for _ in lines]
        starts = [t.count for t in trackers]
        outs = super().read_lines(a_dirs, b_dirs, lines, trackers)
        again: list[tuple[int, int]] = []
        for i, tracker in enumerate(trackers):
            if not isinstance(tracker, RecordingTracker) or not tracker.sigma:
                continue
            # the scale the line settled at: its last block's (the bulk of a long line)
            final = tracker.blocks[-1][2]
            low = [
                first + size - starts[i]
                for first, size, scale in tracker.blocks[:-1]
                if first >= starts[i] and scale < REREAD_BELOW * final
            ]
            if low:
                again.append((i, max(low)))
        if again:
            sub = [tuple(_prefix(index, stop) for index in lines[i]) for i, stop in again]
            values = super().read_lines(a_dirs, b_dirs, sub, [trackers[i] for i, _ in again])
            for (i, stop), read in zip(again, values, strict=True):
                outs[i][:stop] = read
                self.rereads += stop
        return outs

    def read_offsets(self, dirs):
        """a^T u as the base reader reads it, then its warm-up entries again at the final scale."""
        out = super().read_offsets(dirs)
        if not self.u_sigma:
            return out
        mu = TARGET_LOGIT_STD / self.u_sigma
        k = min(dirs.n, sum(self.FIRST_LINE_BLOCKS[:2]))  # the blocks before the scale settles
        X = np.zeros((k, 2, self.v.shape[0]))
        dirs.write(X[:, 0], np.arange(k), mu)
        a_v, a_norms = dirs.dots(self.v)[:k], dirs.norms()[:k]
        t = invert_probes(
            self.oracle, X, mu * a_v, np.zeros(k), self.c, mu * a_norms, self.v_norm, self.log
        )
        out[:k] = t / mu
        self.rereads += k
        return out

    def _split(self, rho: float) -> tuple[float, float]:
        root = float(np.sqrt(rho))
        mu, nu = root * COARSE_SPLIT, root / COARSE_SPLIT
        if self.affine and self.u_sigma:
            mu = min(mu, TARGET_LOGIT_STD / self.u_sigma)
            nu = rho / mu
        return mu, nu


def _prefix(index, stop: int):
    return index if isinstance(index, (int, np.integer)) else index[:stop]
