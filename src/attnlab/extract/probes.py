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

from dataclasses import dataclass, field

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
# The denominator a^T v must be at least this fraction of |a| |v|; below it the query is
# dominated by rounding and W cannot be read from it.
MIN_VALUE_ALIGNMENT = 1e-10


def read_values(oracle: Oracle, d: int, affine: bool) -> tuple[np.ndarray, float]:
    """Read v (and c for an affine head) with one-token queries: d of them, d + 1 if affine."""
    tokens = np.eye(d)
    if affine:
        tokens = np.vstack([np.zeros((1, d)), tokens])
    answers = np.asarray(oracle(tokens[:, None, :]), dtype=np.float64)
    c = float(answers[0]) if affine else 0.0
    v = answers[1:] - c if affine else answers
    if not np.any(v):
        raise ExtractionError(
            "the value vector v read from one-token queries is exactly zero: every answer is the "
            "same constant, so the attention weights (and hence W) are not identifiable from this "
            "oracle. Check that the target is a single-head regressor with a non-zero readout."
        )
    return v, c


def value_aligned_basis(v: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random orthogonal d x d matrix A whose columns all have a_k^T v = |v| / sqrt(d).

    Orthogonality keeps the linear solve for W perfectly conditioned; equal alignment with v
    keeps every probe's denominator a^T v as large as an orthonormal basis allows.
    """
    d = v.shape[0]
    rotation = random_orthogonal(d, rng)
    z = rotation.T @ v
    z_unit = z / np.linalg.norm(z)
    ones = np.full(d, 1.0 / np.sqrt(d))
    w = z_unit - ones
    norm = np.linalg.norm(w)
    if norm < 1e-12:
        return rotation
    w /= norm
    householder = np.eye(d) - 2.0 * np.outer(w, w)  # maps z_unit to ones
    return rotation @ householder


def random_orthogonal(d: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-random orthogonal matrix (QR of a Gaussian matrix with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


@dataclass
class ProbeLog:
    """What the probes did: oracle calls, the largest logit seen, the scales used."""

    calls: int = 0
    max_abs_logit: float = 0.0
    scales: list[float] = field(default_factory=list)


def bilinear_probe(oracle: Oracle, a: np.ndarray, b: np.ndarray, v: np.ndarray, c: float,
                   log: ProbeLog | None = None) -> np.ndarray:
    """Send the queries [(a_k + b_k); b_k] in one batch and return t_k = a_k^T W b_k (+ a_k^T u).

    a, b have shape (n, d) and are the actual tokens (already scaled). Raises ExtractionError
    when a probe cannot be inverted: a^T v too small, or the softmax saturated.
    """
    a = np.atleast_2d(a)
    b = np.atleast_2d(b)
    denominators = a @ v
    alignment = np.abs(denominators) / (np.linalg.norm(a, axis=1) * np.linalg.norm(v))
    if np.any(~(alignment >= MIN_VALUE_ALIGNMENT)):
        k = int(np.argmin(alignment))
        raise ExtractionError(
            f"probe {k} has a^T v = {denominators[k]:.3e}, too small to invert (|a^T v| / (|a||v|) = "
            f"{alignment[k]:.1e} < {MIN_VALUE_ALIGNMENT}). W is only identifiable through directions "
            f"a with a^T v != 0; choose probes aligned with v (method='adaptive' does)."
        )
    X = np.stack([a + b, b], axis=1)
    y = np.asarray(oracle(X), dtype=np.float64)
    alpha = (y - b @ v - c) / denominators
    if log is not None:
        log.calls += 1
    bad = ~((alpha > 0.0) & (alpha < 1.0))
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ExtractionError(
            f"the softmax saturated: probe {k} of this batch gives attention weight {alpha[k]!r}, "
            f"outside (0, 1), so its logit cannot be inverted ({int(bad.sum())} of {alpha.size} probes). "
            f"The bilinear form a^T W b is too large for the probe magnitudes |a| = "
            f"{np.linalg.norm(a[k]):.3g}, |b| = {np.linalg.norm(b[k]):.3g}; use method='adaptive', "
            f"which scales its probes to the target."
        )
    t = np.log(alpha) - np.log1p(-alpha)
    if log is not None and t.size:
        log.max_abs_logit = max(log.max_abs_logit, float(np.max(np.abs(t))))
    return t


class ScaleTracker:
    """Learns the size of unit-probe measurements and proposes the next probe scale.

    A probe with |a| = mu, |b| = nu reads mu * nu * (unit measurement); the tracker keeps the
    unit measurements seen so far and proposes rho = mu * nu so that logits have standard
    deviation ~ TARGET_LOGIT_STD, never growing faster than MAX_SCALE_GROWTH per block.
    """

    def __init__(self, initial: float = INITIAL_PROBE):
        self.scale = float(initial)
        self.count = 0
        self._sum_sq = 0.0
        self._max_abs = 0.0

    @property
    def sigma(self) -> float | None:
        """A robust spread of the unit measurements (None before any)."""
        if self.count == 0:
            return None
        rms = np.sqrt(self._sum_sq / self.count)
        return float(max(rms, self._max_abs / 4.0))

    def observe(self, unit_values: np.ndarray) -> None:
        unit_values = np.asarray(unit_values, dtype=np.float64)
        if unit_values.size == 0:
            return
        self._sum_sq += float(np.sum(unit_values ** 2))
        self.count += unit_values.size
        self._max_abs = max(self._max_abs, float(np.max(np.abs(unit_values))))

    def next_scale(self) -> float:
        """The product mu * nu for the next block."""
        sigma = self.sigma
        if sigma is not None:
            grown = self.scale * MAX_SCALE_GROWTH
            self.scale = min(TARGET_LOGIT_STD / sigma, grown) if sigma > 0 else grown
        return self.scale


def split_scale(rho: float) -> tuple[float, float]:
    """Split mu * nu = rho into token norms: shrink b first (keeps b^T v small next to a^T v)."""
    if rho <= 1.0:
        return 1.0, rho
    root = float(np.sqrt(rho))
    return root, root


class BilinearReader:
    """Reads a^T W b (and a^T u for affine heads) for unit directions, in adaptively scaled blocks.

    The first blocks are small (1, 4, 16, ... queries) while the scale of W is being learned;
    once enough measurements are in, a whole request goes out in blocks of up to `max_block`
    queries. Affine heads: read the u-part first (`read_offsets`), it is subtracted from every
    later measurement.
    """

    WARMUP = 64

    def __init__(self, oracle: Oracle, v: np.ndarray, c: float, affine: bool,
                 max_block: int | None = None):
        self.oracle, self.v, self.c, self.affine = oracle, v, c, affine
        d = v.shape[0]
        self.max_block = max_block or max(1, (1 << 22) // (2 * d))
        self.w_scale = ScaleTracker()
        self.u_scale = ScaleTracker(INITIAL_OFFSET_PROBE)
        self.u: np.ndarray | None = None
        self.log = ProbeLog()

    def _blocks(self, total: int, tracker: ScaleTracker):
        done, size = 0, 1
        while done < total:
            if tracker.count >= self.WARMUP:
                size = self.max_block
            step = min(size, total - done, self.max_block)
            yield slice(done, done + step)
            done += step
            size *= 4

    def read_offsets(self, a_dirs: np.ndarray) -> np.ndarray:
        """a^T u for each row of a_dirs, from queries [a; 0] (affine heads only)."""
        a_dirs = np.atleast_2d(a_dirs)
        out = np.empty(a_dirs.shape[0])
        for block in self._blocks(a_dirs.shape[0], self.u_scale):
            mu = self.u_scale.next_scale()
            a = mu * a_dirs[block]
            t = bilinear_probe(self.oracle, a, np.zeros_like(a), self.v, self.c, self.log)
            self.log.scales.append(mu)
            out[block] = t / mu
            self.u_scale.observe(out[block])
        return out

    def read(self, a_dirs: np.ndarray, b_dirs: np.ndarray, spread: float | None = None) -> np.ndarray:
        """a_k^T W b_k for each pair of rows (unit directions); one batch per block.

        `spread`, when the caller knows it, is the expected size of these unit measurements
        and sets the probe scale directly instead of the running estimate.
        """
        a_dirs, b_dirs = np.atleast_2d(a_dirs), np.atleast_2d(b_dirs)
        if self.affine and self.u is None:
            raise RuntimeError("read the bias term u (read_offsets) before reading W of an affine head")
        out = np.empty(a_dirs.shape[0])
        for block in self._blocks(a_dirs.shape[0], self.w_scale):
            rho = TARGET_LOGIT_STD / spread if spread else self.w_scale.next_scale()
            mu, nu = split_scale(rho)
            offsets = a_dirs[block] @ self.u if self.affine else 0.0
            if self.affine and self.u_scale.sigma:
                # keep the u-part of the logit inside the budget too: shrink a, grow b
                mu = min(mu, TARGET_LOGIT_STD / self.u_scale.sigma)
                nu = rho / mu
            t = bilinear_probe(self.oracle, mu * a_dirs[block], nu * b_dirs[block], self.v, self.c, self.log)
            self.log.scales.append(mu * nu)
            out[block] = (t / mu - offsets) / nu
            self.w_scale.observe(out[block])
        return out
