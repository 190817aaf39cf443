"""Query primitives for single-head extraction: value reads and bilinear probes.

One-token queries read the value map: f([x]) = v^T x (+ c for an affine head).
The two-token query [(a + b); b] reads one bilinear measurement: its scores differ by
a^T W b (+ a^T u for an affine head), so the weight on the first token is
alpha = sigmoid(a^T W b + a^T u) and the answer is y = b^T v + c + alpha a^T v, hence

    a^T W b + a^T u = logit((y - b^T v - c) / (a^T v)).

`ScaleTracker` picks probe magnitudes from the measurements already made, so that the
softmax never saturates (|logit| stays a few units) yet the measurements are large enough
to be read to full float64 precision (alpha is only known to about 1e-16 absolutely).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.oracle import Oracle

# The first probe of an extraction knows nothing about the scale of W. With |a| = 1 and
# |b| = INITIAL_PROBE its logit is 1e-2 * a^T W b: unsaturated for unit-vector bilinear values
# up to ~1e3, and still read to ~1e-11 relative accuracy down to values of ~1e-3.
INITIAL_PROBE = 1e-2
# The bias probes [a; 0] of an affine head read a^T u with logit |a| * a^T u, but their
# denominator |a| a^T v shrinks with |a| too, so a tiny first probe loses precision quadratically
# (against the constant c). They start larger: unsaturated for |a^T u| up to ~100 on unit a.
INITIAL_OFFSET_PROBE = 0.25
# Probe scales aim at logits with this standard deviation: the largest of thousands stays
# below ~4 (alpha in [0.02, 0.98]), where the logit inversion amplifies errors at most ~50x.
TARGET_LOGIT_STD = 0.8
# A block's scale grows at most this much over the previous block's, in case the early
# scale estimate (from a handful of measurements) happened to be small.
MAX_SCALE_GROWTH = 16.0
# A reading whose W part of the logit exceeds this is read again at a smaller scale (`BilinearReader`
# repairs it): beyond it the inversion divides the answer's rounding by alpha (1 - alpha) < 4.6e-5,
# which leaves ~1e-12 of the value, and ~37 saturates float64 outright. Ten target spreads: a line
# of Gaussian entries never gets there, an adversarial entry hidden in a line's bulk does.
SAFE_LOGIT = 10.0
# A saturated reading carries no value, only that |logit| >~ 37: its next try is this much smaller.
SATURATED_SHRINK = 64.0
# Logits below this may be the answers' rounding (alpha = 1/2 +- 1e-16 reads +- 4e-16; an affine
# head's subtracted u part leaves up to ~1e-12), not a measurement: a line showing only such
# readings is treated as zero so far, not as small (growing a zero line's scale without end made
# an affine head's second token, and the answer's rounding with it, astronomically large).
NOISE_LOGIT = 1e-9
# The denominator a^T v must be at least this fraction of |a| |v|; below it the query is
# dominated by rounding and W cannot be read from it.
MIN_VALUE_ALIGNMENT = 1e-10


def read_values(
    oracle: Oracle, d: int, affine: bool, log: ProbeLog | None = None, chunk: int | None = None
) -> tuple[np.ndarray, float]:
    """Read v (and c for an affine head) with one-token queries: d of them, d + 1 if affine.

    The one-hot queries are written `chunk` at a time into one reused buffer (never d x d at once).
    """
    log = log if log is not None else ProbeLog()
    count = d + 1 if affine else d
    chunk = max(1, min(count, chunk or count))
    buffer = np.zeros((chunk, 1, d))
    answers = np.empty(count)
    for first in range(0, count, chunk):
        n = min(chunk, count - first)
        X = buffer[:n]
        X.fill(0.0)
        index = np.arange(first, first + n) - (1 if affine else 0)
        hot = index >= 0  # row -1 of an affine head is the zero token, which reads c
        X[np.flatnonzero(hot), 0, index[hot]] = 1.0
        answers[first : first + n] = log.ask(oracle, X)
    log.value_answers = answers
    c = float(answers[0]) if affine else 0.0
    v = answers[1:] - c if affine else answers
    if not np.any(v):
        raise ExtractionError(
            "the value vector v read from one-token queries is exactly zero: every answer is the "
            "same constant, so the attention weights (and hence W) are not identifiable from this "
            "oracle. Check that the target is a single-head regressor with a non-zero readout."
        )
    return v, c


@dataclass
class ProbeLog:
    """What the probes did: oracle calls, the largest logit seen, the scales used."""

    calls: int = 0
    max_abs_logit: float = 0.0
    scale_min: float = float("inf")
    scale_max: float = 0.0
    value_answers: np.ndarray | None = (
        None  # the raw one-token answers (their precision is read off)
    )
    # wall time spent waiting on the oracle (its checks and the target); the rest is the learner's
    oracle_seconds: float = 0.0
    # the largest |b^T v + c| / |a^T v| of a probe (the tokens as sent): an answer is rounded
    # relative to |y| = |b^T v + c + alpha a^T v|, so alpha loses this factor in precision
    imbalance: float = 0.0
    _imbalance_sum: float = 0.0
    _imbalance_count: float = 0.0
    saturated: int = 0  # probes that saturated in tolerant reads (read again, smaller)
    repaired: int = 0  # queries spent reading entries again at a smaller scale
    rescaled: int = 0  # queries spent reading again entries read far below their line's scale

    def note_scales(self, low: float, high: float) -> None:
        self.scale_min, self.scale_max = min(self.scale_min, low), max(self.scale_max, high)

    def note_imbalance(self, ratios, counts) -> None:
        """Probe imbalances (|b^T v + c| / |a^T v| bounds), each for `counts` probes."""
        ratios = np.atleast_1d(np.asarray(ratios, dtype=np.float64))
        counts = np.broadcast_to(np.asarray(counts, dtype=np.float64), ratios.shape)
        if ratios.size and np.all(np.isfinite(ratios)):
            self.imbalance = max(self.imbalance, float(ratios.max()))
            self._imbalance_sum += float(ratios @ counts)
            self._imbalance_count += float(counts.sum())

    @property
    def mean_imbalance(self) -> float:
        """The imbalance averaged over the probes (what W's Frobenius error sees)."""
        return self._imbalance_sum / self._imbalance_count if self._imbalance_count else 0.0

    def ask(self, oracle: Oracle, X: np.ndarray) -> np.ndarray:
        """oracle(X) as float64, timed and counted."""
        started = time.perf_counter()
        try:
            return np.asarray(oracle(X), dtype=np.float64)
        finally:
            self.oracle_seconds += time.perf_counter() - started
            self.calls += 1


def bilinear_probe(
    oracle: Oracle,
    a: np.ndarray,
    b: np.ndarray,
    v: np.ndarray,
    c: float,
    log: ProbeLog | None = None,
) -> np.ndarray:
    """Send the queries [(a_k + b_k); b_k] in one batch and return t_k = a_k^T W b_k (+ a_k^T u).

    a, b have shape (n, d) and are the actual tokens (already scaled). Raises ExtractionError
    when a probe cannot be inverted: a^T v too small, or the softmax saturated.
    """
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    X = np.empty((a.shape[0], 2, a.shape[1]))
    X[:, 1, :] = b
    np.add(a, b, out=X[:, 0, :])
    return invert_probes(
        oracle,
        X,
        a @ v,
        b @ v,
        c,
        np.sqrt(np.einsum("ij,ij->i", a, a)),
        float(np.linalg.norm(v)),
        log,
    )


def invert_probes(
    oracle: Oracle,
    X: np.ndarray,
    a_dot_v: np.ndarray,
    b_dot_v: np.ndarray,
    c: float,
    a_norms: np.ndarray,
    v_norm: float,
    log: ProbeLog | None = None,
    aligned: bool = False,
    tolerate: bool = False,
) -> np.ndarray:
    """The logits t_k of prebuilt probe queries X[k] = [(a_k + b_k); b_k], given a_k^T v and b_k^T v.

    `aligned`: the caller has checked that every a_k is aligned with v (`well_aligned`), so the
    check before the queries are sent is skipped. `tolerate`: a saturated probe gives NaN
    instead of raising (for a caller that reads it again at a smaller scale).
    """
    alpha = probe_weights(oracle, X, a_dot_v, b_dot_v, c, a_norms, v_norm, log, aligned, tolerate)
    return logits(alpha, log, repairable=tolerate)


def probe_weights(
    oracle: Oracle,
    X: np.ndarray,
    a_dot_v: np.ndarray,
    b_dot_v: np.ndarray,
    c: float,
    a_norms: np.ndarray,
    v_norm: float,
    log: ProbeLog | None = None,
    aligned: bool = False,
    tolerate: bool = False,
) -> np.ndarray:
    """The attention weights alpha_k on the first token of the probes X (the first half of
    `invert_probes`): the queries are sent, and a weight outside (0, 1) raises here (NaN with
    `tolerate`)."""
    if not aligned:
        check_alignment(a_dot_v, a_norms, v_norm)
    y = log.ask(oracle, X) if log is not None else np.asarray(oracle(X), dtype=np.float64)
    alpha = y - b_dot_v  # = (y - b^T v - c) / a^T v, computed in one array
    alpha -= c
    alpha /= a_dot_v
    # min and max see a NaN too (it propagates), so this is the test alpha in (0, 1) for all
    if not (alpha.size == 0 or (alpha.min() > 0.0 and alpha.max() < 1.0)):
        bad = ~((alpha > 0.0) & (alpha < 1.0))
        if tolerate:
            alpha[bad] = np.nan
            if log is not None:
                log.saturated += int(bad.sum())
            return alpha
        k = int(np.flatnonzero(bad)[0])
        raise ExtractionError(
            f"the softmax saturated: probe {k} of this batch gives attention weight {alpha[k]!r}, "
            f"outside (0, 1), so its logit cannot be inverted ({int(bad.sum())} of {alpha.size} probes). "
            f"The bilinear form a^T W b is too large for the probe magnitudes |a| = {a_norms[k]:.3g}, "
            f"|b| = {np.linalg.norm(X[k, 1]):.3g}; use method='adaptive', which scales its probes "
            f"to the target."
        )
    return alpha


def logits(alpha: np.ndarray, log: ProbeLog | None = None, repairable: bool = False) -> np.ndarray:
    """log(alpha / (1 - alpha)) for weights in (0, 1) (the second half of `invert_probes`; any
    shape, so that a reader may invert many batches' weights at once).

    `repairable`: logits beyond SAFE_LOGIT (and NaN) will be read again at a smaller scale, so
    the log's largest logit (which sizes the error estimate) leaves them out.
    """
    t = np.log(alpha)
    t -= np.log1p(-alpha)
    if log is not None and t.size:
        high, low = float(t.max()), float(t.min())
        if repairable and not (-SAFE_LOGIT <= low and high <= SAFE_LOGIT):
            kept = t[np.abs(t) <= SAFE_LOGIT]  # NaN compares false: left out too
            high, low = float(kept.max(initial=0.0)), float(kept.min(initial=0.0))
        elif high != high or low != low:  # NaN without repair: nothing to record
            high, low = float(np.nanmax(t, initial=0.0)), float(np.nanmin(t, initial=0.0))
        log.max_abs_logit = max(log.max_abs_logit, high, -low)
    return t


def well_aligned(a_dot_v: np.ndarray, a_norms: np.ndarray, v_norm: float) -> bool:
    """Whether every direction passes `check_alignment` with a margin of 2x at any scale (the
    check of probes mu a_k then cannot fail, whatever the rounding of mu a_k^T v and mu |a_k|)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        alignment = np.abs(a_dot_v) / (a_norms * v_norm)
    return bool(np.all(alignment >= 2.0 * MIN_VALUE_ALIGNMENT))


def check_alignment(a_dot_v: np.ndarray, a_norms: np.ndarray, v_norm: float) -> None:
    """The ExtractionError for a probe whose a^T v is too small to invert, if any."""
    with np.errstate(divide="ignore", invalid="ignore"):
        alignment = np.abs(a_dot_v) / (a_norms * v_norm)
    if np.any(~(alignment >= MIN_VALUE_ALIGNMENT)):
        k = int(np.argmin(np.nan_to_num(alignment, nan=-1.0)))
        raise ExtractionError(
            f"probe {k} has a^T v = {a_dot_v[k]:.3e}, too small to invert (|a^T v| / (|a||v|) = "
            f"{alignment[k]:.1e} < {MIN_VALUE_ALIGNMENT}). W is only identifiable through directions "
            f"a with a^T v != 0; choose probes aligned with v (method='adaptive' does)."
        )


class ScaleTracker:
    """Learns the size of unit-probe measurements and proposes the next probe scale.

    A probe with |a| = mu, |b| = nu reads mu * nu * (unit measurement); the tracker keeps the
    unit measurements seen so far and proposes rho = mu * nu so that logits have standard
    deviation ~ TARGET_LOGIT_STD, never growing faster than MAX_SCALE_GROWTH per block.
    """

    def __init__(self, initial: float = INITIAL_PROBE):
        self.scale = float(initial)
        self.capped = False  # the last proposed scale was held back by MAX_SCALE_GROWTH
        self.count = 0
        self.max_logit = 0.0  # the largest |logit| a reading of this line had
        self._sum_sq = 0.0
        self._max_abs = 0.0

    @property
    def sigma(self) -> float | None:
        """A cautious spread of the unit measurements (None before any).

        Inflated while there are few of them: five Gaussian samples can undershoot the spread
        by 2x, and the next block may hold hundreds of measurements.
        """
        if self.count == 0:
            return None
        rms = math.sqrt(self._sum_sq / self.count)
        return max(rms, self._max_abs / 4.0) * (1.0 + 2.0 / math.sqrt(self.count))

    def observe(self, unit_values: np.ndarray) -> None:
        unit_values = np.asarray(unit_values, dtype=np.float64)
        if unit_values.size == 0:
            return
        self.observe_summary(
            unit_values.size, float(np.sum(unit_values**2)), float(np.max(np.abs(unit_values)))
        )

    def observe_summary(self, count: int, sum_sq: float, max_abs: float) -> None:
        """`observe` for values given by their count, sum of squares and largest magnitude."""
        self._sum_sq += sum_sq
        self.count += count
        self.max_logit = max(self.max_logit, max_abs * self.scale)
        self._max_abs = max(self._max_abs, max_abs)

    def next_scale(self) -> float:
        """The product mu * nu for the next block."""
        sigma = self.sigma
        if sigma is not None:
            grown = self.scale * MAX_SCALE_GROWTH
            # an all-zero line so far (sigma 0, or logits at rounding level: a zero column reads
            # alpha = 1/2 +- 1e-16) grows too, but is no evidence of a small line: only a
            # measured spread below the target holds the line in its warm-up
            self.capped = (
                sigma > 0 and grown < TARGET_LOGIT_STD / sigma and self.max_logit > NOISE_LOGIT
            )
            self.scale = min(TARGET_LOGIT_STD / sigma, grown) if sigma > 0 else grown
        return self.scale


def split_scale(rho: float) -> tuple[float, float]:
    """Split mu * nu = rho into token norms: shrink b first (keeps b^T v small next to a^T v)."""
    if rho <= 1.0:
        return 1.0, rho
    root = math.sqrt(rho)
    return root, root
