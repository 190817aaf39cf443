"""How precise the oracle's answers are, read off the answers themselves, and what that costs W.

A service computing in float32 (or float16/bfloat16) returns numbers on that format's grid: their
float64 mantissas end in zero bits. The number of mantissa bits the value reads (v's one-token
answers) actually use bounds the answers' relative precision from below; float64 answers use all
52 of them. Below float64 (`COARSE_PRECISION`) the extraction changes course:

- `PrecisionReader` reads with a long a and a short b, keeps the u part of a probe's logit
  small, forgets its cautious warm-up readings when it sets a line's scale, and reads those
  entries again at the settled scale.
- the reading error is measured, not modelled: an entry read along b and along -b
  (`noise_from_column`; `paired_full_read` reads every entry so and averages the two).
- rank="auto" judges a column's dependence by that noise (`dependence_statistic`), and the
  oversampled fit (`joint_fit`, in `adaptive.oversampled`) counts singular values above a
  multiple of the noise edge.
- `error_report` turns the measured noise or the fit's residual into info['estimated_error'].
"""

from __future__ import annotations

import numpy as np

from attnlab.extract.single_head.probes import (
    MAX_SCALE_GROWTH,
    TARGET_LOGIT_STD,
    ScaleTracker,
    invert_probes,
)
from attnlab.extract.single_head.reader import BilinearReader

FLOAT64_EPS = float(np.finfo(np.float64).eps)
# An answer's arithmetic error is a few units of its format's rounding (sums of d terms, the
# softmax); the error estimate multiplies the grid spacing by this much.
ARITHMETIC_SLACK = 8.0
# Estimated relative errors of W above this trigger a warning: float32 answers read at their
# floor (~1e-6) pass, float16/bfloat16 (~1e-3 and worse) and badly conditioned reads warn.
WARN_ERROR = 1e-5
# Float64 answers promise exactness (~1e-9 and better): an estimate above this on them says the
# probes could not be balanced (an affine head whose score bias dwarfs W), and warns. Balanced
# probes stay below ~1e-11 at d = 4096; on 600 adversarial targets
# (benchmarks/single_head_adversarial.py) every W off by more than 1e-9 warned at this level,
# and 29 exact ones did too (the imbalance bound errs on the safe side).
WARN_ERROR_FLOAT64 = 1e-8


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


# The token of `generic_answers`: fixed, so that the probes that follow are those of the seed.
GENERIC_TOKEN_SEED = 0x5EED


def generic_answers(oracle, d: int, log) -> np.ndarray:
    """One answer to a one-token query of a generic (Gaussian) token, read as the values were.

    One-hot queries read v's entries themselves, and a float64 head whose v entries are short
    binary fractions (a one-hot or integer v) answers them on a coarse grid, indistinguishable
    from a float32 service's. The answer v^T x + c for a generic x uses all 52 bits in float64
    arithmetic (but with probability ~2^-29) and at most 24 in float32: one query settles it.
    """
    token = np.random.default_rng(GENERIC_TOKEN_SEED).standard_normal((1, 1, d))
    return log.ask(oracle, token)


def rank_tolerance(precision: float) -> float:
    """The fixed-tolerance rank check's tolerance (float64 answers: FLOAT64_RANK_TOL).

    Coarse answers do not use it for the decision: rank="auto" there compares a column's misfit
    with its measured reading noise (`adaptive.dependence_statistic`, `noise_from_column`);
    a fixed tolerance could not separate a dependent float16 column (~6.5e-2) from an
    independent one (~0.2). It is still reported in info['rank_tol'].
    """
    return max(FLOAT64_RANK_TOL, 3.0 * float(np.sqrt(precision)))


# One reading a^T W b from coarse answers is good to about this many units of the answers'
# precision, relative to its line's spread (measured at float16 on the benchmark heads, d = 32..384,
# exact u and v and the ideal scale: 4-5 units; through the reader, with u and v read: 5-8).
READ_NOISE_FACTOR = 8.0


def reading_noise(precision: float) -> float:
    """The relative error of one coarse reading (of its line's spread), from the answers' precision."""
    return READ_NOISE_FACTOR * precision


# Entries read twice (along b and along -b) to measure the reading error.
NOISE_ROWS = 32


def dependence_statistic(values, old, scales, scale, read_noise) -> float:
    """Mean square misfit of the new column's values by the old columns, in units of its noise.

    `values`: the new column at r + k rows; `old`: the r previous columns at those rows. An
    entry read at scale s has an absolute error of about read_noise * TARGET_LOGIT_STD / s; the
    least-squares misfit of a dependent column is then its own errors and the old columns'
    errors weighted by the fitted coefficients, over k degrees of freedom: this ratio is ~1
    (chi-square over k) for a dependent column and large for an independent one.
    """
    coef, *_ = np.linalg.lstsq(old, values, rcond=None)
    misfit = values - old @ coef
    k = values.size - old.shape[1]
    column_noise = read_noise * TARGET_LOGIT_STD / np.asarray(scales)
    new_noise = read_noise * TARGET_LOGIT_STD / scale
    s2 = new_noise**2 + float(np.sum((coef * column_noise) ** 2))
    return float(misfit @ misfit / (k * s2))


def joint_fit(basis, Q, C, basis_rows, R) -> np.ndarray:
    """X (r x d) minimising |basis X Q - C|^2 + |basis_rows X - R|^2: the rows and the columns.

    Both sets of readings carry X: the columns C = A^T W Q along span(Q), the rows everywhere.
    With basis orthonormal the first term is |X Q - basis^T C|^2 (plus a constant), so the
    normal equations X Q Q^T + S X = F (S = basis_rows^T basis_rows) are a Sylvester equation
    that the eigenvectors of S and the projector Q Q^T diagonalise: in O(r^2 d + r m d).
    """
    lam, U = np.linalg.eigh(basis_rows.T @ basis_rows)
    F = U.T @ (basis.T @ C @ Q.T + basis_rows.T @ R)  # the right-hand side, in S's eigenbasis
    FQ = F @ Q
    on_q = FQ / (lam[:, None] + 1.0)  # along span(Q): eigenvalue 1 of Q Q^T
    off_q = (F - FQ @ Q.T) / lam[:, None]  # off span(Q): the rows alone
    return U @ (on_q @ Q.T + off_q)


def noise_from_column(reader: BilinearReader, A, q: np.ndarray, column: np.ndarray, line) -> float:
    """The relative error of one reading, from a column read along q, its last rows read along -q.

    The two queries [(a + b); b] and [(a - b); -b] read the same value (up to sign) through
    different tokens and roundings; half the mean square difference is one reading's variance
    (an error of the u read, shared by both, counts once rather than twice: a slight
    over-estimate where it dominates). rank="auto" does this on its first column: its last
    NOISE_ROWS entries (read at the line's settled scale, not in its warm-up) again along -q,
    on the same line. NOISE_ROWS queries.
    """
    from attnlab.extract.single_head.directions import DenseDirections

    d = A.d
    rows = np.arange(d - min(NOISE_ROWS, d // 2), d)
    spread = float(np.sqrt(np.mean(column**2)))
    if rows.size == 0 or spread == 0.0:
        return 0.0
    again = -reader.read(A, DenseDirections(-q[None, :]), rows, 0, line=line)
    return float(np.sqrt(np.mean((column[rows] - again) ** 2) / 2.0) / spread)


def error_report(precision: float, max_abs_logit: float, d: int, info: dict | None = None) -> dict:
    """A relative error estimate for W from the answers' precision (and the fit, where there is one).

    Exact (float64) answers: the a-priori bound of the logit inversion, which divides an answer's
    error by alpha (1 - alpha), over a probe's d rounded products, times the probes' mean
    |b^T v + c| / |a^T v| where it exceeds 1 (coarse; meant as a floor).
    Coarse answers: a reading of the precision-aware reader is good to about
    COARSE_READ_ERROR x precision (measured on float32 heads, d = 32..384, with biases), and an
    oversampled low-rank fit measures its own reading error (the fit residual and the discarded
    singular values), which under-states the error of W by ~2-3x (COARSE_FIT_FACTOR).
    """
    info = info or {}
    if precision > COARSE_PRECISION:
        estimate = COARSE_READ_ERROR * precision
        if info.get("read_noise") and info.get("rank_mode") == "full-paired":
            # every entry the mean of two readings (the u part cancelled)
            estimate = PAIRED_READ_FACTOR * float(info["read_noise"]) / np.sqrt(2.0)
        elif info.get("full_read_noise") and info.get("rank_mode") == "auto-full":
            # every entry read once or (read_twice columns) twice: the mixture's noise
            estimate = FULL_READ_FACTOR * float(info["full_read_noise"])
        elif info.get("read_noise") and info.get("rank_mode") in ("full", "auto-full"):
            # W = A M with every entry of M read once: W's relative error is one reading's,
            # measured on one random line; the coordinate lines of M vary around it
            estimate = FULL_READ_FACTOR * float(info["read_noise"])
        if info.get("oversampled"):
            measured = max(info.get("fit_residual", 0.0), info.get("discarded_singular", 0.0))
            estimate = max(COARSE_FIT_FACTOR * measured, estimate / 4.0)
        return {"estimated_error": float(estimate)}
    alpha = 1.0 / (1.0 + np.exp(-max(max_abs_logit, 0.8)))
    inversion = 1.0 / (alpha * (1.0 - alpha))
    # an answer dominated by the second token's value (b^T v + c >> a^T v: a score bias that
    # dwarfs W forces a short first token) rounds alpha up to that much more coarsely. The worst
    # probe's ratio over-states W's error where few probes are that imbalanced, but a smaller
    # power left errors of 1e-5 unannounced (benchmarks/single_head_adversarial.py, family
    # "scaled": affine heads with W ~1e-8 next to unit biases): the bound errs on the safe side
    imbalance = max(1.0, float(info.get("probe_imbalance_mean") or 0.0))
    estimate = float(precision * ARITHMETIC_SLACK * inversion * np.sqrt(d) * imbalance)
    if precision <= 4 * FLOAT64_EPS:
        estimate = max(estimate, 1e-14)
    return {"estimated_error": estimate}


# Coarse answers: W's relative error per unit of answer precision, and what the oversampled fit's
# own residual under-states (both measured: benchmarks/precision.py, float32 rows).
COARSE_READ_ERROR = 20.0
# A full read's W error per unit of the measured reading noise: 0.5x-1.1x measured on six
# transformers BERT heads (d = 32, float16 and float32 alike); 1.5 centres the estimate.
FULL_READ_FACTOR = 1.5
PAIRED_READ_FACTOR = 1.0
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
# Rounds of re-reading: a line whose last block was itself still growing is read again once more.
REREAD_ROUNDS = 2
# Coarse answers: the u-part of a W probe's logit (mu a^T u) is kept to this spread (the base
# reader: TARGET_LOGIT_STD). The u read's own error, scaled by mu, lands on every reading of
# its row; halving it took float16 W errors from 4.4e-3 to 4.0e-3 (geometric mean of 7 heads).
U_LOGIT = 0.4


class RecordingTracker(ScaleTracker):
    """A ScaleTracker that remembers at which scale each block of its line was read.

    Its spread is taken from the blocks read at (or near) the line's largest scale only: coarse
    answers read at a cautious scale are mostly rounding (float16 at logits ~1e-2: errors as
    large as the values), and the base tracker's running maximum never forgets them, which kept
    every later block of the line below its target scale.
    """

    def __init__(self, initial: float):
        super().__init__(initial)
        self.blocks: list[tuple[int, int, float]] = []  # (first entry, entries, scale)
        self._block_stats: list[tuple[float, int, float, float]] = []  # scale, n, sum sq, max

    def observe(self, unit_values: np.ndarray) -> None:
        values = np.asarray(unit_values, dtype=np.float64)
        self.blocks.append((self.count, int(values.size), self.scale))
        super().observe(values)
        if values.size:
            self._block_stats.append(
                (self.scale, values.size, float(np.sum(values**2)), float(np.max(np.abs(values))))
            )

    @property
    def sigma(self) -> float | None:
        if not self._block_stats:
            return None
        top = max(scale for scale, *_ in self._block_stats)
        trusted = [b for b in self._block_stats if b[0] >= TRUSTED_SCALE * top]
        count = sum(n for _, n, _, _ in trusted)
        rms = np.sqrt(sum(sq for _, _, sq, _ in trusted) / count)
        peak = max(m for *_, m in trusted)
        return float(max(rms, peak / 4.0) * (1.0 + SPREAD_CAUTION / np.sqrt(count)))


# A block read at less than this fraction of its line's largest scale does not inform the spread.
TRUSTED_SCALE = 0.25
# The spread estimate is inflated by 1 + SPREAD_CAUTION / sqrt(readings) (the base tracker: 2).
# Coarse readings lose precision like 1 / logit: the bulk of a line read at half the target
# logit (the base inflation after 5 readings) had 1.5x the error of one read at the target.
SPREAD_CAUTION = 1.0


class PrecisionReader(BilinearReader):
    """A BilinearReader for coarse (float32/float16) answers.

    Same probes and stages; the differences: a long a and a short b (`COARSE_SPLIT`, with the
    u part of the logit kept to `U_LOGIT`), a line's spread taken from its blocks read near its
    largest scale (`RecordingTracker`), a pilot line before lines read side by side, finer
    warm-up blocks, and the warm-up entries read again at the settled scale (`REREAD_BELOW`,
    up to `REREAD_ROUNDS` times): about 5 more queries per line.
    """

    rereads = 0
    reread = True  # paired reads (`paired_full_read`) read every entry twice instead
    FAR_BELOW = None  # its warm-up re-reads (REREAD_BELOW) already cover the far-below entries
    GROW_ONE_AT_A_TIME = False  # coarse readings near zero are rounding, not a small line
    # The very first line grows its scale from INITIAL_PROBE 16x per block: more, smaller blocks
    # reach a target ~1e3 away within ~30 entries (coarse answers read below it are read again).
    FIRST_LINE_BLOCKS = (1, 2, 4, 8, 16, 32, 64)
    # Later lines: one block more than the base reader's (1, 4) before the bulk, so that the
    # bulk is read with the spread of 21 readings, not 5.
    LINE_BLOCKS = (1, 4, 16)

    def new_line(self) -> ScaleTracker:
        base = super().new_line()
        return RecordingTracker(base.scale)

    def read_lines(self, a_dirs, b_dirs, lines, trackers=None):
        lines = list(lines)
        if trackers is None and self.w_sigma is None and len(lines) > 1:
            # a pilot: the first line alone, so that the others start near their own scale
            # instead of all growing from INITIAL_PROBE side by side
            return self.read_lines(a_dirs, b_dirs, lines[:1]) + self.read_lines(
                a_dirs, b_dirs, lines[1:]
            )
        trackers = list(trackers) if trackers else [self.new_line() for _ in lines]
        starts = [t.count for t in trackers]
        outs = super().read_lines(a_dirs, b_dirs, lines, trackers)
        if not self.reread:
            return outs
        # the scale every entry of this call was read at (the blocks recorded since `starts`)
        scales = []
        for i, tracker in enumerate(trackers):
            per_entry = np.full(outs[i].size, np.inf)
            if isinstance(tracker, RecordingTracker):
                for first, size, scale in tracker.blocks:
                    if first >= starts[i]:
                        per_entry[first - starts[i] : first - starts[i] + size] = scale
            scales.append(per_entry)
        for _ in range(REREAD_ROUNDS):
            again: list[tuple[int, int]] = []
            for i, tracker in enumerate(trackers):
                if not isinstance(tracker, RecordingTracker) or not tracker.sigma:
                    continue
                settled = min(TARGET_LOGIT_STD / tracker.sigma, tracker.scale * MAX_SCALE_GROWTH)
                low = np.flatnonzero(scales[i] < REREAD_BELOW * settled)
                if low.size:
                    again.append((i, int(low[-1]) + 1))
            if not again:
                break
            sub = [tuple(_prefix(index, stop) for index in lines[i]) for i, stop in again]
            values = super().read_lines(a_dirs, b_dirs, sub, [trackers[i] for i, _ in again])
            for (i, stop), read in zip(again, values, strict=True):
                new_scale = trackers[i].blocks[-1][2]
                old = scales[i][:stop]
                # inverse-variance weights: a reading's error scales like 1 / its scale
                w_old, w_new = old**2, new_scale**2
                outs[i][:stop] = (w_old * outs[i][:stop] + w_new * read) / (w_old + w_new)
                scales[i][:stop] = np.sqrt(w_old + w_new)
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
            mu = min(mu, U_LOGIT / self.u_sigma)
            nu = rho / mu
        return mu, nu


def paired_full_read(reader: PrecisionReader, A, rng: np.random.Generator):
    """Full-rank W from every entry of M = A^T W B read twice, along b and along -b.

    [(a + b); b] and [(a - b); -b] read the same entry through different tokens and roundings,
    and the error of the u read (mu a^T u, subtracted from both logits) enters them with
    opposite signs: their mean halves the reading variance and cancels the u part. The second
    pass continues every line at its settled scale, so it needs no warm-up re-reads; an entry
    the first pass read while its line was warming up counts by its scale (weights scale^2).
    B is a random orthogonal basis (dense: -B is a direction family as B is). 2 d^2 queries.
    Returns W and the reading noise measured by the pairs read at comparable scales.
    """
    from attnlab.extract.single_head.directions import DenseDirections, random_orthonormal_columns

    d = A.d
    B = random_orthonormal_columns(d, d, rng)
    plus, minus = DenseDirections(B.T), DenseDirections(-B.T)
    lines = [(np.arange(d), j) for j in range(d)]
    reader.reread = False
    try:
        pilot = _recording(reader.new_line())
        first = reader.read_lines(A, plus, lines[:1], [pilot])
        trackers = [pilot] + [_recording(reader.new_line()) for _ in lines[1:]]
        first += reader.read_lines(A, plus, lines[1:], trackers[1:])
        scales = [_entry_scales(t, d) for t in trackers]
        second = [-x for x in reader.read_lines(A, minus, lines, trackers)]
    finally:
        reader.reread = True
    M = np.empty((d, d))
    differences = []
    for j in range(d):
        w1, w2 = scales[j] ** 2, trackers[j].blocks[-1][2] ** 2
        M[:, j] = (w1 * first[j] + w2 * second[j]) / (w1 + w2)
        settled = w1 >= 0.25 * w2
        spread = float(np.sqrt(np.mean(M[:, j] ** 2)))
        if spread > 0 and settled.any():
            differences.append((first[j][settled] - second[j][settled]) / spread)
    diff = np.concatenate(differences) if differences else np.zeros(1)
    read_noise = float(np.sqrt(np.mean(diff**2) / 2.0))
    return A.apply(M) @ B.T, read_noise


def _recording(tracker: ScaleTracker) -> RecordingTracker:
    assert isinstance(tracker, RecordingTracker)  # PrecisionReader.new_line makes them
    return tracker


def _entry_scales(tracker, n: int) -> np.ndarray:
    """The scale each of a line's first n entries was read at (from its recorded blocks)."""
    out = np.empty(n)
    for first, size, scale in tracker.blocks:
        if first < n:
            out[first : min(n, first + size)] = scale
    return out


def _prefix(index, stop: int):
    return index if isinstance(index, (int, np.integer)) else index[:stop]
