"""`BilinearReader`: reads many a^T W b at once, in adaptively scaled, bounded-size chunks.

Requests come as lines (a column or a row of the matrix being read). A line is a pair
(a_index, b_index) into two direction families (see `directions`); each index is an int (the same
direction for the whole line, broadcast) or an index array shared between lines, so d lines of d
entries cost O(d) to describe, not O(d^2). A line starts with one cautious query (logit ~1% of
the target size predicted from earlier lines), then four, then the rest, each stage scaled from
what the line has shown so far. Low-rank matrices have lines of very different sizes, so no line
trusts another's scale blindly.

Memory: the queries of a stage are written `chunk` at a time into one preallocated buffer
(`query_buffer.QueryBuffer`) and sent before the next chunk is written; nothing but the answers
(one float per query) outlives a chunk. On the host the stage's lines are dealt out to fixed slot
blocks (`dealing`: a slot keeps its line, and its constant row, from chunk to chunk); on a device
they are packed one after another and written by the device writer. Scales are fixed per stage,
so the chunk size never changes which probes are sent (their last bits may differ: blocks of
equal size are written by one batched product, uneven ones by a plain one).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.single_head.dealing import (
    Lines,
    Side,
    StageReader,
    lines_aligned,
    observe,
)
from attnlab.extract.single_head.directions import DenseDirections, Directions
from attnlab.extract.single_head.probes import (
    INITIAL_OFFSET_PROBE,
    INITIAL_PROBE,
    NOISE_LOGIT,
    SAFE_LOGIT,
    SATURATED_SHRINK,
    TARGET_LOGIT_STD,
    ProbeLog,
    ScaleTracker,
    invert_probes,
    split_scale,
)
from attnlab.extract.single_head.query_buffer import QueryBuffer, write_queries
from attnlab.oracle import Oracle

Index = int | np.ndarray
Line = tuple[Index, Index]

# Default chunk on the host: about 4 MiB of two-token float64 queries per oracle call. A chunk that
# stays in the last-level cache (32 MiB here, shared with the target's own intermediates) is
# written, hashed by the Oracle and read by the target without a trip to memory: against 16 MiB
# chunks the whole extraction took 0.77x the time at 1024 x 64, 0.84x at 4096 x 64, 0.83x at
# 1024 x 128 and 0.96x at 512 full rank (one thread, `single_head_scale.py --split --chunk-mib`),
# the target's own time falling most. The per-call overheads are still amortised at 4 MiB (the
# learner's absolute time fell too); only its share of the now faster target rose, by about a
# point. On a device, kernel launches favour larger calls: 16 MiB there.
CHUNK_BYTES = 4 << 20
DEVICE_CHUNK_BYTES = 16 << 20


def default_chunk(d: int, oracle=None) -> int:
    """Queries per oracle call: CHUNK_BYTES of them, DEVICE_CHUNK_BYTES for a non-CPU device."""
    device = getattr(oracle, "device", None)
    on_device = device is not None and getattr(device, "type", "cpu") != "cpu"
    return max(1, (DEVICE_CHUNK_BYTES if on_device else CHUNK_BYTES) // (16 * d))


def _length(line: Line) -> int:
    sizes = [np.size(i) for i in line if not isinstance(i, (int, np.integer))]
    return max(sizes) if sizes else 1


def _part(index: Index, rows: slice) -> Index:
    return index if isinstance(index, (int, np.integer)) else index[rows]


class BilinearReader:
    """Reads a^T W b (and a^T u for affine heads) for directions from two families."""

    FIRST_LINE_BLOCKS: tuple[int, ...] = (1, 4, 16, 64)
    LINE_BLOCKS: tuple[int, ...] = (1, 4)
    CAUTION = 0.01
    # entries read below this fraction of their line's settled scale are read again at it
    # (`_read_again_far_below`; None: the subclass re-reads its own way)
    FAR_BELOW: float | None = 1e-4
    # a line still held back by MAX_SCALE_GROWTH reads one entry a stage until it settles
    GROW_ONE_AT_A_TIME = True
    _long_warmup = False  # the lines after a pilot: FIRST_LINE_BLOCKS, not LINE_BLOCKS

    def __init__(
        self,
        oracle: Oracle,
        v: np.ndarray,
        c: float,
        affine: bool,
        chunk: int | None = None,
        log: ProbeLog | None = None,
    ):
        self.oracle, self.v, self.c, self.affine = oracle, v, c, affine
        d = v.shape[0]
        self.chunk = int(chunk) if chunk else default_chunk(d, oracle)
        self.v_norm = float(np.linalg.norm(v))
        self.queries = QueryBuffer(oracle, self.chunk, d)
        self.u: np.ndarray | None = None
        self.u_sigma: float | None = None
        self.w_sigma: float | None = None  # largest line spread seen so far
        self.log = log if log is not None else ProbeLog()

    def new_line(self) -> ScaleTracker:
        """A tracker for a fresh line: the very first starts at INITIAL_PROBE, later ones cautiously."""
        if self.w_sigma:
            return ScaleTracker(self.CAUTION * TARGET_LOGIT_STD / self.w_sigma)
        return ScaleTracker(INITIAL_PROBE)

    def read_offsets(self, dirs: Directions) -> np.ndarray:
        """a^T u for every direction of `dirs`, from queries [a; 0] (affine heads only)."""
        tracker = ScaleTracker(INITIAL_OFFSET_PROBE)
        out = np.empty(dirs.n)
        a_v, a_norms = dirs.dots(self.v), dirs.norms()
        done = 0
        for size in (*self.FIRST_LINE_BLOCKS, None):
            take = dirs.n - done if size is None else min(size, dirs.n - done)
            if take <= 0:
                break
            mu = tracker.next_scale()
            self.log.note_imbalance(abs(self.c) / (mu * float(np.min(np.abs(a_v)))), take)
            for first in range(done, done + take, self.chunk):
                n = min(self.chunk, done + take - first)
                X = np.empty((n, 2, self.v.shape[0]))
                dirs.write(X[:, 0], np.arange(first, first + n), mu)
                X[:, 1] = 0.0
                rows = slice(first, first + n)
                t = invert_probes(
                    self.oracle,
                    X,
                    mu * a_v[rows],
                    np.zeros(n),
                    self.c,
                    mu * a_norms[rows],
                    self.v_norm,
                    self.log,
                    tolerate=True,
                )
                out[rows] = t / mu
                with np.errstate(invalid="ignore"):
                    unsafe = np.flatnonzero(~(np.abs(t) <= SAFE_LOGIT))
                if unsafe.size:
                    out[first + unsafe] = self._read_entries(
                        dirs, first + unsafe, None, None, _retry_scales(t[unsafe], mu), None
                    )
            self.log.note_scales(mu, mu)
            tracker.observe(out[done : done + take])
            done += take
        self.u_sigma = tracker.sigma
        return out

    def read(
        self,
        a_dirs,
        b_dirs,
        a_index: Index | None = None,
        b_index: Index | None = None,
        line: ScaleTracker | None = None,
    ) -> np.ndarray:
        """a_k^T W b_k for the pairs (a_dirs[a_index[k]], b_dirs[b_index[k]]), as one line.

        Dense arrays of directions (rows) are accepted too. Without indices the k-th rows are
        paired. Pass the tracker from `new_line()` to continue a line over several calls.
        """
        a_dirs, b_dirs = _family(a_dirs), _family(b_dirs)
        if a_index is None:
            a_index = b_index = np.arange(a_dirs.n)
        pair: Line = (a_index, a_index if b_index is None else b_index)
        return self.read_lines(a_dirs, b_dirs, [pair], None if line is None else [line])[0]

    def read_lines(
        self, a_dirs, b_dirs, lines: Sequence[Line], trackers: list[ScaleTracker] | None = None
    ) -> list[np.ndarray]:
        """Read several lines side by side: each warm-up stage of every line goes in one batch.

        Each line keeps its own probe scale (queries in one batch may be scaled differently), so
        reading d columns costs a handful of stages, not d times as many.
        """
        if self.affine and self.u is None:
            raise RuntimeError(
                "read the bias term u (read_offsets) before reading W of an affine head"
            )
        a_dirs, b_dirs = _family(a_dirs), _family(b_dirs)
        lines = list(lines)
        if trackers is None and self.w_sigma is None and len(lines) > 1:
            # a pilot: the first line alone, so that the others start at 1% of a measured size,
            # not all at INITIAL_PROBE (a W far from unit size would otherwise cost every line
            # of a full-rank read a repair or a re-read); same queries, one stage more. The
            # others keep the first call's long warm-up: with the short one, 5 readings sized
            # each line's bulk, and ~25 of a d = 1024 read's readings came out above SAFE_LOGIT
            pilot = self.read_lines(a_dirs, b_dirs, lines[:1])
            self._long_warmup = True
            try:
                return pilot + self.read_lines(a_dirs, b_dirs, lines[1:])
            finally:
                self._long_warmup = False
        trackers = trackers or [self.new_line() for _ in lines]
        long_warmup = self.w_sigma is None or self._long_warmup
        warmup = self.FIRST_LINE_BLOCKS if long_warmup else self.LINE_BLOCKS
        lengths = [_length(line) for line in lines]
        out = np.empty(sum(lengths))
        out_base = np.cumsum([0, *lengths])[:-1].astype(np.int64)
        outs = [out[start : start + n] for start, n in zip(out_base, lengths, strict=True)]
        context = Lines(
            a_dirs,
            b_dirs,
            Side([line[0] for line in lines], lengths),
            Side([line[1] for line in lines], lengths),
            a_dirs.dots(self.v),
            b_dirs.dots(self.v),
            a_dirs.norms(),
            a_dirs.dots(self.u) if self.affine and self.u is not None else None,
            out,
            out_base,
            self.c,
            self.v_norm,
        )
        context.aligned = lines_aligned(context)
        # bounds on |a^T v| and |b^T v| over the directions these lines use (probe imbalance)
        a_min = float(np.min(np.abs(context.a_dot_v[context.a.used()]), initial=np.inf))
        b_max = float(np.max(np.abs(context.b_dot_v[context.b.used()]), initial=0.0))
        context.unit = bool(np.all(context.a_norms == 1.0))
        done = [0] * len(lines)
        # the scale each segment of a line was read at: (first, stop, mu nu)
        segments: list[list[tuple[int, int, float]]] = [[] for _ in lines]
        # each line's place in the warm-up (a continued line already knows its scale: it skips it)
        block = [len(warmup) if t.count else 0 for t in trackers]
        # the line whose scale is unknown (the first of a read) grows one reading a stage while
        # capped, and only then takes its warm-up blocks; every line does so past its warm-up
        unknown = self.w_sigma is None
        while True:
            stage: list[tuple[int, slice, float, float]] = []
            for i, tracker in enumerate(trackers):
                remaining = lengths[i] - done[i]
                if remaining <= 0:
                    continue
                mu, nu = self._split(tracker.next_scale())
                size = warmup[block[i]] if block[i] < len(warmup) else None
                take = remaining if size is None else min(size, remaining)
                if (
                    tracker.capped
                    and self.GROW_ONE_AT_A_TIME
                    and (size is None or (unknown and not self._long_warmup))
                ):
                    # still held back by MAX_SCALE_GROWTH: W far from the first probe's guess.
                    # One reading a stage (16x each) until the scale settles, the warm-up blocks
                    # kept for after: the bulk is sized from readings at its own scale. (Lines
                    # after a pilot start at 1% of their predicted size, capped by design for a
                    # step or two: they keep their blocks.)
                    take = 1
                else:
                    block[i] += 1
                stage.append((i, slice(done[i], done[i] + take), mu, nu))
                segments[i].append((done[i], done[i] + take, mu * nu))
                done[i] += take
            if not stage:
                break
            mus, nus = np.array([s[2] for s in stage]), np.array([s[3] for s in stage])
            self.log.note_imbalance(
                (nus / mus * b_max + abs(self.c) / mus) / a_min,
                [rows.stop - rows.start for _, rows, _, _ in stage],
            )
            # the whole stage is sent before the next one: its scales depend on these answers
            if self.queries.host:
                StageReader(self.queries, self.oracle, self.log, context).read(
                    np.array([i for i, _, _, _ in stage], dtype=np.int64),
                    np.array([rows.start for _, rows, _, _ in stage], dtype=np.int64),
                    np.array([rows.stop - rows.start for _, rows, _, _ in stage], dtype=np.int64),
                    np.array([mu for _, _, mu, _ in stage]),
                    np.array([nu for _, _, _, nu in stage]),
                )
            else:
                self._read_packed(context, lines, outs, stage)
            observe(
                trackers, context, stage, lambda seg, values: self._repair(context, seg, values)
            )
        if self.FAR_BELOW is not None:
            # each line's settled scale: the one its spread asks for (a line that ended while
            # still growing has not reached it); none for a line that measured nothing but
            # rounding (a zero line's scale is no settled scale)
            settled = [
                TARGET_LOGIT_STD / t.sigma if t.sigma and t.max_logit > NOISE_LOGIT else None
                for t in trackers
            ]
            self._read_again_far_below(context, outs, segments, settled)
        for tracker in trackers:
            if tracker.sigma:
                self.w_sigma = max(self.w_sigma or 0.0, tracker.sigma)
        return outs

    def _read_again_far_below(self, context: Lines, outs, segments, settled) -> None:
        """Entries read at a scale below FAR_BELOW x their line's settled scale, read again at it.

        A reading's absolute error is the answer's rounding over its scale, so an entry read while
        its line was still growing carries (last scale / its scale) times the error of the rest:
        kept up to 1e4 (~1e-12 of the entry; generic heads whose lines spread down to ~1e-2
        need no query here), beyond it read again (a W of entries ~1e-9: the first line's first
        readings at 1e-2 were 1e-5 off, and W with them). One query each.
        """
        line_index, positions, scales = [], [], []
        for i, parts in enumerate(segments):
            if not parts or settled[i] is None:
                continue
            last = max(parts[-1][2], settled[i])
            for first, stop, rho in parts:
                if rho < self.FAR_BELOW * last:
                    line_index.append(np.full(stop - first, i))
                    positions.append(np.arange(first, stop))
                    scales.append(np.full(stop - first, last))
        if not positions:
            return
        line, pos, rho = (np.concatenate(x) for x in (line_index, positions, scales))
        values = self._read_entries(
            context.a_dirs,
            context.a.at(line, pos),
            context.b_dirs,
            context.b.at(line, pos),
            rho,
            context.a_dot_u,
            counter="rescaled",
        )
        for i in np.unique(line):
            mine = line == i
            outs[int(i)][pos[mine]] = values[mine]

    def _read_packed(self, context: Lines, lines, outs, stage) -> None:
        """One stage on a device buffer: the segments packed one after another into the chunks,
        each written by the device writer."""
        chunk, queries = self.chunk, self.queries
        a_dirs, b_dirs = context.a_dirs, context.b_dirs
        a_dot_v, b_dot_v, a_norms = context.a_dot_v, context.b_dot_v, context.a_norms
        a_dot_u = context.a_dot_u if context.a_dot_u is not None else np.zeros(a_dirs.n)
        # per-query bookkeeping of one chunk: a^T v, b^T v, |a|, a^T u, mu nu
        scaled = np.empty((5, chunk))
        pending: list[tuple[int, slice]] = []  # the line segments in the buffer, in slot order
        filled = 0

        def flush():
            nonlocal filled
            n = filled
            a_v, b_v, a_norm, a_u, rho = scaled[:, :n]
            t = invert_probes(
                self.oracle,
                queries.batch(n),
                a_v,
                b_v,
                self.c,
                a_norm,
                self.v_norm,
                self.log,
                tolerate=True,  # saturated: NaN, read again in `observe`
            )
            values = (t - a_u) / rho
            self.log.note_scales(float(rho.min()), float(rho.max()))
            start = 0
            for i, rows in pending:
                size = rows.stop - rows.start
                outs[i][rows] = values[start : start + size]
                start += size
            pending.clear()
            filled = 0

        for i, rows, mu, nu in stage:
            a_index, b_index = lines[i]
            first = rows.start
            while first < rows.stop:
                take = min(rows.stop - first, chunk - filled)
                part = slice(first, first + take)
                ai, bi = _part(a_index, part), _part(b_index, part)
                slot = slice(filled, filled + take)
                queries.write(slot, a_dirs, ai, mu, b_dirs, bi, nu)
                scaled[0, slot] = mu * a_dot_v[ai]
                scaled[1, slot] = nu * b_dot_v[bi]
                scaled[2, slot] = mu * a_norms[ai]
                scaled[3, slot] = mu * a_dot_u[ai]
                scaled[4, slot] = mu * nu
                pending.append((i, part))
                filled += take
                first += take
                if filled == chunk:
                    flush()
        if filled:
            flush()

    def _repair(self, context: Lines, segment, values: np.ndarray) -> np.ndarray:
        """A stage segment's readings with the unsafe ones (NaN: saturated; or a W logit above
        SAFE_LOGIT) read again, each at a scale chosen from its own first reading."""
        i, rows, mu, nu = segment
        rho = mu * nu
        with np.errstate(invalid="ignore"):
            bad = np.flatnonzero(~(np.abs(values) * rho <= SAFE_LOGIT))
        fixed = values.copy()
        if bad.size:
            line, pos = np.full(bad.size, i), rows.start + bad
            fixed[bad] = self._read_entries(
                context.a_dirs,
                context.a.at(line, pos),
                context.b_dirs,
                context.b.at(line, pos),
                _retry_scales(values[bad] * rho, rho),
                context.a_dot_u,
            )
        return fixed

    def _read_entries(
        self, a_dirs, a_idx, b_dirs, b_idx, rho, a_dot_u, counter: str = "repaired"
    ) -> np.ndarray:
        """a_k^T W b_k (b_dirs None: a_k^T u, from [rho_k a_k; 0]) for a few entries, each at its own
        scale rho_k, shrunk and read again until its logit is safe.

        The learner's only defence against an entry far larger than its line's others (a sparse
        W's row, whose warm-up read zeros): no scale fixed in advance survives every target, so an
        unsafe reading costs one more query, rarely two. Counted in the log (`counter`).
        """
        d = self.v.shape[0]
        a_v, a_norms = a_dirs.dots(self.v), a_dirs.norms()
        b_v = b_dirs.dots(self.v) if b_dirs is not None else None
        result = np.full(a_idx.size, np.nan)
        todo = np.arange(a_idx.size)
        rho = np.asarray(rho, dtype=np.float64).copy()
        for _ in range(REPAIR_ROUNDS):
            for first in range(0, todo.size, self.chunk):
                k = todo[first : first + self.chunk]
                ai = a_idx[k]
                X = np.zeros((k.size, 2, d))
                if b_dirs is None:
                    mu, nu = rho[k], np.zeros(k.size)
                    a_dirs.write_scaled(X[:, 0], ai, mu)
                    b_part = np.zeros(k.size)
                else:
                    bi = b_idx[k]
                    mu, nu = (
                        np.array(z) for z in zip(*(self._split(r) for r in rho[k]), strict=True)
                    )
                    if a_dot_u is not None:  # the u part of the logit stays small too
                        with np.errstate(divide="ignore"):
                            mu = np.minimum(mu, TARGET_LOGIT_STD / np.abs(a_dot_u[ai]))
                        nu = rho[k] / mu
                    a_dirs.write_scaled(X[:, 0], ai, mu)
                    b_dirs.write_scaled(X[:, 1], bi, nu)
                    X[:, 0] += X[:, 1]
                    assert b_v is not None
                    b_part = nu * b_v[bi]
                self.log.note_imbalance((np.abs(b_part) + abs(self.c)) / np.abs(mu * a_v[ai]), 1)
                t = invert_probes(
                    self.oracle,
                    X,
                    mu * a_v[ai],
                    b_part,
                    self.c,
                    mu * a_norms[ai],
                    self.v_norm,
                    self.log,
                    tolerate=True,
                )
                setattr(self.log, counter, getattr(self.log, counter) + k.size)
                if b_dirs is not None and a_dot_u is not None:
                    t -= mu * a_dot_u[ai]
                with np.errstate(invalid="ignore"):
                    safe = np.abs(t) <= SAFE_LOGIT
                result[k[safe]] = t[safe] / rho[k[safe]]
                rho[k[~safe]] = _retry_scales(t[~safe], rho[k[~safe]])
            todo = todo[np.isnan(result[todo])]
            if todo.size == 0:
                return result
        raise ExtractionError(
            f"{todo.size} probe(s) still saturate after {REPAIR_ROUNDS} rounds of reading them "
            f"again {SATURATED_SHRINK:.0f}x smaller (scale now {float(rho[todo].min()):.1e}): the "
            f"head's scores are unbounded at any probe size, so the black box is not one "
            f"finite softmax head (or it returns a constant where a weight is expected)."
        )

    def _split(self, rho: float) -> tuple[float, float]:
        mu, nu = split_scale(rho)
        if self.affine and self.u_sigma:
            # keep the u-part of the logit inside the budget too: shrink a, grow b
            mu = min(mu, TARGET_LOGIT_STD / self.u_sigma)
            nu = rho / mu
        return mu, nu


# An entry is read again at most this many times (each saturated try is 64x smaller: 64^12 ~ 5e21).
REPAIR_ROUNDS = 12


def _retry_scales(logit: np.ndarray, rho) -> np.ndarray:
    """The next scale of readings whose logit was unsafe: one that puts a readable logit at
    TARGET_LOGIT_STD, SATURATED_SHRINK times smaller where the probe saturated (NaN)."""
    logit = np.asarray(logit, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        shrink = np.where(
            np.isfinite(logit), TARGET_LOGIT_STD / np.abs(logit), 1.0 / SATURATED_SHRINK
        )
    return rho * shrink


def _family(dirs) -> Directions:
    return dirs if isinstance(dirs, Directions) else DenseDirections(dirs)


__all__ = [
    "BilinearReader",
    "INITIAL_OFFSET_PROBE",
    "INITIAL_PROBE",
    "default_chunk",
    "write_queries",
]
