"""`BilinearReader`: reads many a^T W b at once, in adaptively scaled, bounded-size chunks.

Requests come as lines (a column or a row of the matrix being read). A line is a pair
(a_index, b_index) into two direction families (see `directions`); each index is an int (the same
direction for the whole line, broadcast) or an index array shared between lines, so d lines of d
entries cost O(d) to describe, not O(d^2). A line starts with one cautious query (logit ~1% of
the target size predicted from earlier lines), then four, then the rest, each stage scaled from
what the line has shown so far. Low-rank matrices have lines of very different sizes, so no line
trusts another's scale blindly.

Memory: the queries of a stage are written `chunk` at a time into one preallocated buffer
(`query_buffer.QueryBuffer`, which rewrites only what changed since the last chunk) and sent
before the next chunk is written; nothing but the answers (one float per query) outlives a chunk.
Scales are fixed per stage, so the chunk size never changes which probes are sent (their last
bits may differ: short warm-up segments are written with a scale per row).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attnlab.extract.single_head.directions import DenseDirections, Directions
from attnlab.extract.single_head.probes import (
    INITIAL_OFFSET_PROBE,
    INITIAL_PROBE,
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

# Default chunk: about 16 MiB of two-token float64 queries per oracle call: large enough that the
# per-call overheads (Python, the Oracle's checks) are amortised (at d = 1024, r = 64, 4 MiB chunks
# left the learner ~1.7x the time of 16 MiB ones), small enough to stay far below d^2 at scale.
CHUNK_BYTES = 16 << 20
# Line segments shorter than this (the warm-up blocks) are written together, a scale per row.
SHORT_SEGMENT = 32


def default_chunk(d: int) -> int:
    return max(1, CHUNK_BYTES // (16 * d))


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
        self.chunk = int(chunk) if chunk else default_chunk(d)
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
                )
                out[rows] = t / mu
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
        a_dot_v, b_dot_v, a_norms = a_dirs.dots(self.v), b_dirs.dots(self.v), a_dirs.norms()
        a_dot_u = a_dirs.dots(self.u) if self.affine else np.zeros(a_dirs.n)
        trackers = trackers or [self.new_line() for _ in lines]
        warmup = self.FIRST_LINE_BLOCKS if self.w_sigma is None else self.LINE_BLOCKS
        lengths = [_length(line) for line in lines]
        outs = [np.empty(n) for n in lengths]
        done = [0] * len(lines)
        chunk, queries = self.chunk, self.queries
        queries.start()
        # per-query bookkeeping of one chunk, preallocated: a^T v, b^T v, |a|, a^T u, mu nu
        scaled = np.empty((5, chunk))
        pending: list[tuple[int, slice]] = []  # the line segments in the buffer, in slot order
        run: list[tuple[Index, Index, float, float, int]] = []  # short segments not yet written
        filled = 0
        written = 0  # slots before this one are written

        def note(slot: slice, ai, bi, mu, nu) -> None:
            scaled[0, slot] = mu * a_dot_v[ai]
            scaled[1, slot] = nu * b_dot_v[bi]
            scaled[2, slot] = mu * a_norms[ai]
            scaled[3, slot] = mu * a_dot_u[ai]
            scaled[4, slot] = mu * nu

        def write_run() -> None:
            """The short segments waiting in `run`, in one write with a scale per row."""
            nonlocal written
            if not run:
                return
            ai = np.concatenate([np.broadcast_to(a, n) for a, _, _, _, n in run])
            bi = np.concatenate([np.broadcast_to(b, n) for _, b, _, _, n in run])
            mu = np.concatenate([np.full(n, m) for _, _, m, _, n in run])
            nu = np.concatenate([np.full(n, m) for _, _, _, m, n in run])
            slot = slice(written, written + ai.size)
            queries.write_rows(slot, a_dirs, ai, mu, b_dirs, bi, nu)
            note(slot, ai, bi, mu, nu)
            run.clear()
            written = slot.stop

        def flush():
            nonlocal filled, written
            write_run()
            n = filled
            a_v, b_v, a_norm, a_u, rho = scaled[:, :n]
            t = invert_probes(
                self.oracle, queries.batch(n), a_v, b_v, self.c, a_norm, self.v_norm, self.log
            )
            values = (t - a_u) / rho
            self.log.note_scales(float(rho.min()), float(rho.max()))
            start = 0
            for i, rows in pending:
                size = rows.stop - rows.start
                outs[i][rows] = values[start : start + size]
                start += size
            pending.clear()
            filled = written = 0

        def add(i: int, rows: slice, mu: float, nu: float):
            """Write the queries rows of line i into the buffer (flushing whenever it is full)."""
            nonlocal filled, written
            a_index, b_index = lines[i]
            first = rows.start
            while first < rows.stop:
                take = min(rows.stop - first, chunk - filled)
                part = slice(first, first + take)
                ai, bi = _part(a_index, part), _part(b_index, part)
                if take < SHORT_SEGMENT and queries.host:
                    run.append((ai, bi, mu, nu, take))
                else:
                    write_run()
                    slot = slice(filled, filled + take)
                    queries.write(slot, a_dirs, ai, mu, b_dirs, bi, nu)
                    note(slot, ai, bi, mu, nu)
                    written = slot.stop
                pending.append((i, part))
                filled += take
                first += take
                if filled == chunk:
                    flush()

        for size in (*warmup, None):
            stage: list[tuple[int, slice, float, float]] = []
            for i, tracker in enumerate(trackers):
                if size is not None and tracker.count and done[i] == 0:
                    continue  # a continued line already knows its scale: it skips the warm-up
                remaining = lengths[i] - done[i]
                take = remaining if size is None else min(size, remaining)
                if take <= 0:
                    continue
                mu, nu = self._split(tracker.next_scale())
                stage.append((i, slice(done[i], done[i] + take), mu, nu))
                done[i] += take
            for segment in stage:
                add(*segment)
            if filled:
                flush()  # the next stage's scales depend on this stage's answers
            for i, rows, _, _ in stage:
                trackers[i].observe(outs[i][rows])
        for tracker in trackers:
            if tracker.sigma:
                self.w_sigma = max(self.w_sigma or 0.0, tracker.sigma)
        return outs

    def _split(self, rho: float) -> tuple[float, float]:
        mu, nu = split_scale(rho)
        if self.affine and self.u_sigma:
            # keep the u-part of the logit inside the budget too: shrink a, grow b
            mu = min(mu, TARGET_LOGIT_STD / self.u_sigma)
            nu = rho / mu
        return mu, nu


def _family(dirs) -> Directions:
    return dirs if isinstance(dirs, Directions) else DenseDirections(dirs)


__all__ = [
    "BilinearReader",
    "INITIAL_OFFSET_PROBE",
    "INITIAL_PROBE",
    "default_chunk",
    "write_queries",
]
