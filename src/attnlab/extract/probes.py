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
    # rotation @ (I - 2 w w^T), the Householder reflection that maps z_unit to ones, in O(d^2)
    return rotation - 2.0 * np.outer(rotation @ w, w)


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
    X = np.empty((a.shape[0], 2, a.shape[1]))
    X[:, 1, :] = b
    np.add(a, b, out=X[:, 0, :])
    return invert_probes(oracle, X, a @ v, b @ v, c, np.sqrt(np.einsum("ij,ij->i", a, a)),
                         float(np.linalg.norm(v)), log)


def invert_probes(oracle: Oracle, X: np.ndarray, a_dot_v: np.ndarray, b_dot_v: np.ndarray, c: float,
                  a_norms: np.ndarray, v_norm: float, log: ProbeLog | None = None) -> np.ndarray:
    """The logits t_k of prebuilt probe queries X[k] = [(a_k + b_k); b_k], given a_k^T v and b_k^T v."""
    with np.errstate(divide="ignore", invalid="ignore"):
        alignment = np.abs(a_dot_v) / (a_norms * v_norm)
    if np.any(~(alignment >= MIN_VALUE_ALIGNMENT)):
        k = int(np.argmin(np.nan_to_num(alignment, nan=-1.0)))
        raise ExtractionError(
            f"probe {k} has a^T v = {a_dot_v[k]:.3e}, too small to invert (|a^T v| / (|a||v|) = "
            f"{alignment[k]:.1e} < {MIN_VALUE_ALIGNMENT}). W is only identifiable through directions "
            f"a with a^T v != 0; choose probes aligned with v (method='adaptive' does)."
        )
    y = np.asarray(oracle(X), dtype=np.float64)
    alpha = (y - b_dot_v - c) / a_dot_v
    if log is not None:
        log.calls += 1
    bad = ~((alpha > 0.0) & (alpha < 1.0))
    if np.any(bad):
        k = int(np.flatnonzero(bad)[0])
        raise ExtractionError(
            f"the softmax saturated: probe {k} of this batch gives attention weight {alpha[k]!r}, "
            f"outside (0, 1), so its logit cannot be inverted ({int(bad.sum())} of {alpha.size} probes). "
            f"The bilinear form a^T W b is too large for the probe magnitudes |a| = {a_norms[k]:.3g}, "
            f"|b| = {np.linalg.norm(X[k, 1]):.3g}; use method='adaptive', which scales its probes "
            f"to the target."
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
        """A cautious spread of the unit measurements (None before any).

        Inflated while there are few of them: five Gaussian samples can undershoot the spread
        by 2x, and the next block may hold hundreds of measurements.
        """
        if self.count == 0:
            return None
        rms = np.sqrt(self._sum_sq / self.count)
        return float(max(rms, self._max_abs / 4.0) * (1.0 + 2.0 / np.sqrt(self.count)))

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

    Requests come as lines (a column or a row of the matrix being read): a line starts with one
    cautious query (logit ~1% of the target size predicted from earlier lines), then four, then
    the rest, each block scaled from what the line has shown so far. Low-rank matrices have
    lines of very different sizes, so no line trusts another's scale blindly. Affine heads: read
    the u-part first (`read_offsets`); it is subtracted from every later measurement.
    """

    FIRST_LINE_BLOCKS = (1, 4, 16, 64)
    LINE_BLOCKS = (1, 4)
    CAUTION = 0.01

    def __init__(self, oracle: Oracle, v: np.ndarray, c: float, affine: bool,
                 max_block: int | None = None):
        self.oracle, self.v, self.c, self.affine = oracle, v, c, affine
        d = v.shape[0]
        # about 1 MiB of queries per oracle call keeps the learner's passes over them in cache
        self.max_block = max_block or max(1, (1 << 17) // (2 * d))
        self.v_norm = float(np.linalg.norm(v))
        self._buffer: np.ndarray | None = None
        self.u: np.ndarray | None = None
        self.u_sigma: float | None = None
        self.w_sigma: float | None = None  # largest line spread seen so far
        self.log = ProbeLog()

    def new_line(self) -> ScaleTracker:
        """A tracker for a fresh line: the very first starts at INITIAL_PROBE, later ones cautiously."""
        if self.w_sigma:
            return ScaleTracker(self.CAUTION * TARGET_LOGIT_STD / self.w_sigma)
        return ScaleTracker(INITIAL_PROBE)

    def read_offsets(self, a_dirs: np.ndarray) -> np.ndarray:
        """a^T u for each row of a_dirs, from queries [a; 0] (affine heads only)."""
        a_dirs = np.atleast_2d(a_dirs)
        tracker = ScaleTracker(INITIAL_OFFSET_PROBE)
        out = np.empty(a_dirs.shape[0])
        for block in _warmup_slices(a_dirs.shape[0], self.FIRST_LINE_BLOCKS, self.max_block):
            mu = tracker.next_scale()
            a = mu * a_dirs[block]
            t = bilinear_probe(self.oracle, a, np.zeros_like(a), self.v, self.c, self.log)
            self.log.scales.append(mu)
            out[block] = t / mu
            tracker.observe(out[block])
        self.u_sigma = tracker.sigma
        return out

    def read(self, a_dirs: np.ndarray, b_dirs: np.ndarray, a_index=None, b_index=None,
             line: ScaleTracker | None = None) -> np.ndarray:
        """a_k^T W b_k for the direction pairs (a_dirs[a_index[k]], b_dirs[b_index[k]]), as one line.

        Without indices the k-th rows are paired. Pass the tracker from `new_line()` to continue
        a line over several calls.
        """
        if a_index is None:
            a_index = b_index = np.arange(np.atleast_2d(a_dirs).shape[0])
        a_index, b_index = np.broadcast_arrays(np.asarray(a_index), np.asarray(b_index))
        return self.read_lines(a_dirs, b_dirs, [(a_index, b_index)], None if line is None else [line])[0]

    def read_lines(self, a_dirs: np.ndarray, b_dirs: np.ndarray, lines: list[tuple[np.ndarray, np.ndarray]],
                   trackers: list[ScaleTracker] | None = None) -> list[np.ndarray]:
        """Read several lines side by side: each warm-up stage of every line goes in one batch.

        A line is a pair of index arrays into the unit directions a_dirs (p, d) and b_dirs (q, d).
        Each line keeps its own probe scale (queries in one batch may be scaled differently), so
        reading d columns costs a handful of oracle calls, not d times as many.
        """
        if self.affine and self.u is None:
            raise RuntimeError("read the bias term u (read_offsets) before reading W of an affine head")
        # row-major copies: gathering rows of a transposed view would stride through memory
        a_dirs, b_dirs = np.ascontiguousarray(np.atleast_2d(a_dirs)), np.ascontiguousarray(np.atleast_2d(b_dirs))
        a_dot_v, b_dot_v = a_dirs @ self.v, b_dirs @ self.v
        a_norms = np.sqrt(np.einsum("ij,ij->i", a_dirs, a_dirs))
        a_dot_u = a_dirs @ self.u if self.affine else np.zeros(a_dirs.shape[0])
        trackers = trackers or [self.new_line() for _ in lines]
        warmup = self.FIRST_LINE_BLOCKS if self.w_sigma is None else self.LINE_BLOCKS
        outs = [np.empty(len(a_index)) for a_index, _ in lines]
        done = [0] * len(lines)
        pending: list[tuple[int, slice, float, float]] = []
        pending_size = 0

        def flush():
            # queries are written straight into a reused token-major buffer; a line's constant
            # direction is broadcast and a run of consecutive directions is a view, so most
            # parts cost three passes over their queries and no gather
            sizes = [rows.stop - rows.start for _, rows, _, _ in pending]
            n = sum(sizes)
            X = self._query_buffer(n)
            scaled_a_v, scaled_b_v, scaled_a_norm, scaled_a_u, rho = (np.empty(n) for _ in range(5))
            start = 0
            for (i, rows, mu, nu), size in zip(pending, sizes):
                stop = start + size
                ai, bi = lines[i][0][rows], lines[i][1][rows]
                a_part, _ = _directions(a_dirs, ai)
                b_part, b_single = _directions(b_dirs, bi)
                np.multiply(b_part, nu, out=X[start:stop, 1])
                np.multiply(a_part, mu, out=X[start:stop, 0])
                X[start:stop, 0] += X[start:stop, 1][:1] if b_single else X[start:stop, 1]
                scaled_a_v[start:stop] = mu * a_dot_v[ai]
                scaled_b_v[start:stop] = nu * b_dot_v[bi]
                scaled_a_norm[start:stop] = mu * a_norms[ai]
                scaled_a_u[start:stop] = mu * a_dot_u[ai]
                rho[start:stop] = mu * nu
                start = stop
            values = np.empty(n)
            for first in range(0, n, self.max_block):
                block = slice(first, first + self.max_block)
                t = invert_probes(self.oracle, X[block], scaled_a_v[block], scaled_b_v[block], self.c,
                                  scaled_a_norm[block], self.v_norm, self.log)
                values[block] = (t - scaled_a_u[block]) / rho[block]
            self.log.scales.extend([float(rho.min()), float(rho.max())])
            start = 0
            for (i, rows, _, _), size in zip(pending, sizes):
                outs[i][rows] = values[start:start + size]
                trackers[i].observe(values[start:start + size])
                start += size
            pending.clear()

        for size in (*warmup, None):
            for i, ((a_index, _), tracker) in enumerate(zip(lines, trackers)):
                if size is not None and tracker.count and done[i] == 0:
                    continue  # a continued line already knows its scale: it skips the warm-up
                remaining = len(a_index) - done[i]
                take = remaining if size is None else min(size, remaining)
                if take <= 0:
                    continue
                mu, nu = self._split(tracker.next_scale())
                pending.append((i, slice(done[i], done[i] + take), mu, nu))
                pending_size += take
                done[i] += take
                if pending_size >= self.max_block:
                    flush()
                    pending_size = 0
            if pending:
                flush()  # the next stage's scales depend on this stage's answers
                pending_size = 0
        for tracker in trackers:
            if tracker.sigma:
                self.w_sigma = max(self.w_sigma or 0.0, tracker.sigma)
        return outs

    def _query_buffer(self, n: int) -> np.ndarray:
        """Room for n two-token queries (n, 2, d), reused between calls (fresh pages would cost
        more than filling them). Token-major storage: each slot X[:, i] is one contiguous block."""
        if self._buffer is None or self._buffer.shape[1] < n:
            self._buffer = np.empty((2, n, self.v.shape[0]))
        return self._buffer[:, :n].transpose(1, 0, 2)

    def _split(self, rho: float) -> tuple[float, float]:
        mu, nu = split_scale(rho)
        if self.affine and self.u_sigma:
            # keep the u-part of the logit inside the budget too: shrink a, grow b
            mu = min(mu, TARGET_LOGIT_STD / self.u_sigma)
            nu = rho / mu
        return mu, nu

def _directions(dirs: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, bool]:
    """dirs[index] without copying when possible: (one row, True) if the index is constant,
    a slice view if it is a run of consecutive rows, else a gathered copy."""
    first, last = int(index[0]), int(index[-1])
    if first == last and np.all(index == first):
        return dirs[first:first + 1], True
    if last - first == index.size - 1 and np.all(np.diff(index) == 1):
        return dirs[first:last + 1], False
    return dirs[index], False


def _warmup_slices(total: int, warmup: tuple[int, ...], max_block: int):
    """Slices of sizes warmup[0], warmup[1], ..., then max_block-sized pieces of the rest."""
    done = 0
    for size in (*warmup, *([max_block] * (-(-total // max_block)))):
        if done >= total:
            return
        step = min(size, total - done)
        yield slice(done, done + step)
        done += step
