"""One stage of a `BilinearReader` read on a host buffer: the lines dealt out to fixed slot blocks.

A stage reads a segment of each of several lines at one scale per line. Packing the segments one
after another into the chunks puts a new line into every slot now and then, and each time the
slot's constant row (a column read's nu q_j, a row read's mu a_p) must be written again: a pass
over the buffer per chunk. Dealt out instead, every segment gets a fixed block of slots (of
about chunk / segments each) and sends its next queries from that block, chunk after chunk, so
a slot keeps its line, and its constant row, until the line's segment ends. Each chunk is then
written by a handful of vectorised calls for all blocks at once (`QueryBuffer.write_*`), and its
bookkeeping (a^T v, b^T v, |a|, where each answer goes) is a few array operations, whatever the
number of lines.

Which queries are sent does not depend on the chunk size (the scales are fixed per stage, and
every probe is written by the same per-row arithmetic wherever its slot is); only which of them
share an oracle call does.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from attnlab.extract.single_head.directions import (
    CoordinateDirections,
    Directions,
    ShiftedCoordinates,
)
from attnlab.extract.single_head.probes import (
    SAFE_LOGIT,
    ProbeLog,
    ScaleTracker,
    logits,
    probe_weights,
    well_aligned,
)
from attnlab.extract.single_head.query_buffer import QueryBuffer

Index = int | np.ndarray


# A layout's weights are inverted (log, scatter into the output) this many readings at a time,
# not chunk by chunk: the few array operations then run once per several oracle calls.
DEFER_READINGS = 1 << 16


class Side:
    """How the lines index one direction family: one constant per line (`const`), one index array
    shared by every line (`shared`), or each line its own, concatenated (`flat`, from `base`)."""

    def __init__(self, indices: Sequence[Index], lengths: Sequence[int]):
        self.const: np.ndarray | None = None
        self.shared: np.ndarray | None = None
        self.flat: np.ndarray | None = None
        self.base: np.ndarray | None = None
        if all(isinstance(i, (int, np.integer)) for i in indices):
            self.const = np.fromiter((int(i) for i in indices), dtype=np.int64, count=len(indices))
        elif all(i is indices[0] for i in indices):
            self.shared = np.asarray(indices[0], dtype=np.int64)
        else:
            parts = [
                np.broadcast_to(np.asarray(i, dtype=np.int64), n)
                for i, n in zip(indices, lengths, strict=True)
            ]
            self.flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
            self.base = np.cumsum([0, *lengths])[:-1].astype(np.int64)

    def used(self) -> np.ndarray:
        """Every direction index the lines use (with repeats)."""
        for index in (self.const, self.shared, self.flat):
            if index is not None:
                return index
        raise AssertionError("a Side holds one of const, shared, flat")

    def at(self, line: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """The direction index of each query (line[k], position pos[k] in its line)."""
        if self.const is not None:
            return self.const[line]
        if self.shared is not None:
            return self.shared[pos]
        assert self.flat is not None and self.base is not None
        return self.flat[self.base[line] + pos]


@dataclass
class Lines:
    """What a `read_lines` call reads, as arrays: the families, their dot products, the sides."""

    a_dirs: Directions
    b_dirs: Directions
    a: Side
    b: Side
    a_dot_v: np.ndarray
    b_dot_v: np.ndarray
    a_norms: np.ndarray
    a_dot_u: np.ndarray | None  # None: not affine
    out: np.ndarray  # every line's readings, one after another
    out_base: np.ndarray  # where each line starts in `out`
    c: float
    v_norm: float
    aligned: bool = False  # every a the lines use passes the alignment check (`well_aligned`)
    unit: bool = False  # every a has norm exactly 1

    @property
    def kind(self) -> str:
        """How a chunk is written (see QueryBuffer): 'row' (a constant per line, b = e_j varying),
        'column' (a varying, b a constant dense row per line), 'full' (a varying, b = e_j constant
        per line) or 'plain' (anything else)."""
        coordinate = isinstance(self.b_dirs, CoordinateDirections)
        a_const, b_const = self.a.const is not None, self.b.const is not None
        if coordinate and a_const and not b_const:
            return "row"
        if coordinate and b_const and not a_const:
            return "full"
        if b_const and not coordinate and not a_const:
            return "column"
        return "plain"


def deal(remaining: np.ndarray, chunk: int) -> np.ndarray:
    """Block sizes for segments with `remaining` queries left (at most `chunk` segments, each > 0):
    all of them if they fit in one chunk, else as even as the chunk allows (water-filling: no block
    larger than its segment's rest, the blocks summing to exactly `chunk`)."""
    if int(remaining.sum()) <= chunk:
        return remaining.copy()
    low, high = 1, int(remaining.max())  # the largest level L with sum(min(remaining, L)) <= chunk
    while low < high:
        mid = (low + high + 1) // 2
        if int(np.minimum(remaining, mid).sum()) <= chunk:
            low = mid
        else:
            high = mid - 1
    blocks = np.minimum(remaining, low)
    slack = chunk - int(blocks.sum())
    if slack:
        grow = np.flatnonzero(remaining > low)[:slack]
        blocks[grow] += 1
    return blocks


def lines_aligned(lines: Lines) -> bool:
    """Whether every first-token direction of these lines is `well_aligned` with v."""
    used = lines.a.used()
    return well_aligned(lines.a_dot_v[used], lines.a_norms[used], lines.v_norm)


class StageReader:
    """Reads one stage: segments (line, first position, length, mu, nu), dealt out to slot blocks."""

    def __init__(self, buffer: QueryBuffer, oracle, log: ProbeLog, lines: Lines):
        self.buffer, self.oracle, self.log, self.lines = buffer, oracle, log, lines
        self.kind = lines.kind

    def read(
        self,
        seg_line: np.ndarray,
        seg_first: np.ndarray,
        seg_len: np.ndarray,
        seg_mu: np.ndarray,
        seg_nu: np.ndarray,
    ) -> None:
        chunk = self.buffer.chunk
        m = seg_line.size
        key_base = self.buffer.new_keys(m)  # one constant-row key per segment of this stage
        remaining = seg_len.astype(np.int64)
        done = np.zeros(m, dtype=np.int64)
        active = np.empty(0, dtype=np.int64)
        joined = 0  # segments before this one have joined the active set
        while True:
            active = active[remaining[active] > 0]
            if active.size < chunk and joined < m:
                more = min(m, joined + chunk - active.size)
                active = np.concatenate([active, np.arange(joined, more)])
                joined = more
            if active.size == 0:
                return
            blocks = deal(remaining[active], chunk)
            chunks = int(np.min(remaining[active] // blocks))
            self._layout(
                active, blocks, chunks, done, key_base, seg_line, seg_first, seg_mu, seg_nu
            )
            remaining[active] -= chunks * blocks
            done[active] += chunks * blocks

    def _layout(self, active, blocks, chunks, done, key_base, seg_line, seg_first, seg_mu, seg_nu):
        """`chunks` chunks in which segment active[k] sends blocks[k] queries from the same slots
        (block k: slots sum(blocks[:k]) onwards)."""
        L, buffer = self.lines, self.buffer
        n = int(blocks.sum())
        seg = np.repeat(active, blocks)
        row = np.repeat(np.arange(active.size), blocks)  # the slot's block (table row)
        offset = np.arange(n) - np.repeat(np.cumsum(blocks) - blocks, blocks)
        line = seg_line[seg]
        # the slot's query in its line: slot k of a block sends positions k * chunks + j (chunk j)
        # of the block's share, so a row read's moving entry stays in one cache line or two
        pos = seg_first[seg] + done[seg] + offset * chunks
        mu, nu = seg_mu[seg], seg_nu[seg]
        rho = mu * nu
        out_base = L.out_base[line]
        keys = key_base + seg
        kind = self.kind
        table = first_table = None
        if kind == "row":  # the constant first-token rows mu a_p, one per block
            table = np.empty((active.size, L.a_dirs.d))
            L.a_dirs.write_scaled(table, L.a.at(seg_line[active], done[active]), seg_mu[active])
        elif kind == "column":  # the constant second-token rows nu b_j, one per block
            table = np.empty((active.size, L.b_dirs.d))
            L.b_dirs.write_scaled(table, L.b.at(seg_line[active], done[active]), seg_nu[active])
            if isinstance(L.a_dirs, ShiftedCoordinates):  # and the first tokens' mu s + nu b_j
                first_table = L.a_dirs.shifted_rows(seg_mu[active], table)
        ai = L.a.at(line, pos) if L.a.const is not None else None
        bi = L.b.at(line, pos) if L.b.const is not None else None
        # what a constant side contributes to the inversion, once per layout
        a_v = mu * L.a_dot_v[ai] if ai is not None else None
        # unit directions (the aligned basis): |mu a| is mu itself, no gather per chunk
        a_norm = mu if L.unit else (mu * L.a_norms[ai] if ai is not None else None)
        a_u = mu * L.a_dot_u[ai] if ai is not None and L.a_dot_u is not None else None
        b_v = nu * L.b_dot_v[bi] if bi is not None else None
        self.log.note_scales(float(rho.min()), float(rho.max()))
        even = int(blocks[0]) if np.all(blocks == blocks[0]) else None
        dest = out_base + pos  # where each slot's reading goes in `out` (chunk 0; +j in chunk j)
        # chunks go in batches of up to `held`: their varying indices and dot products are
        # gathered for the whole batch at once, and their weights inverted together (the
        # outputs are read only once the stage is done; a saturated weight is a NaN there, which
        # `observe` hands to the reader's repair)
        held = max(1, min(chunks, DEFER_READINGS // n))
        weights = np.empty((held, n))
        for first in range(0, chunks, held):
            count = min(held, chunks - first)
            steps = np.arange(first, first + count)[:, None]
            positions = pos + steps  # (count, n): position in its line of each query
            A = L.a.at(line, positions) if ai is None else None
            B = L.b.at(line, positions) if bi is None else None
            A_v = a_v if A is None else mu * L.a_dot_v[A]
            B_v = b_v if B is None else nu * L.b_dot_v[B]
            A_norm = a_norm if a_norm is not None else mu * L.a_norms[A]
            A_u = None
            if L.a_dot_u is not None:
                A_u = a_u if A is None else mu * L.a_dot_u[A]
            for k in range(count):
                a_idx = ai if A is None else A[k]
                b_idx = bi if B is None else B[k]
                if kind == "row":
                    buffer.write_row_reads(n, keys, row, table, b_idx, nu)
                elif kind == "column" and first_table is not None:
                    buffer.write_shifted_column_reads(n, keys, row, first_table, table, a_idx, mu)
                elif kind == "column":
                    buffer.write_column_reads(n, keys, row, table, L.a_dirs, a_idx, mu, even)
                elif kind == "full":
                    buffer.write_coordinate_reads(n, L.a_dirs, a_idx, mu, b_idx, nu)
                else:
                    buffer.write_plain(n, L.a_dirs, a_idx, mu, L.b_dirs, b_idx, nu)
                weights[k] = probe_weights(
                    self.oracle,
                    buffer.batch(n),
                    A_v if A is None else A_v[k],
                    B_v if B is None else B_v[k],
                    L.c,
                    A_norm if A_norm.ndim == 1 else A_norm[k],
                    L.v_norm,
                    self.log,
                    L.aligned,
                    tolerate=True,  # saturated: NaN, read again by the caller
                )
            t = logits(weights[:count], self.log, repairable=True)
            if A_u is not None:
                t -= A_u
            t /= rho
            L.out[dest + steps] = t


# `observe` gathers the readings of at most this many segments' worth at once (bounded memory
# for full-rank stages of d^2 readings, one pass of a few array operations for the usual ones).
OBSERVE_BATCH = 1 << 20


def observe(trackers: Sequence[ScaleTracker], lines: Lines, segments, repair=None) -> None:
    """Each line's tracker sees its segment's readings: plain trackers their sums, computed for many
    segments at once; trackers that record more (subclasses overriding `observe`) the values.

    A segment whose largest reading is NaN (a saturated probe) or puts the W part of its logit
    above SAFE_LOGIT is first handed to `repair(segment, values)`, which reads those entries again
    in place (the same pass finds them: no extra sweep over the readings).
    """
    if not segments:
        return
    starts = np.array([lines.out_base[i] + rows.start for i, rows, _, _ in segments])
    sizes = np.array([rows.stop - rows.start for _, rows, _, _ in segments])
    ends = np.cumsum(sizes)
    first = 0
    while first < len(segments):
        # segments first..last-1: at most OBSERVE_BATCH readings (or one segment)
        before = int(ends[first - 1]) if first else 0
        last = max(first + 1, int(np.searchsorted(ends, before + OBSERVE_BATCH, side="right")))
        part_sizes = sizes[first:last]
        offsets = np.cumsum(part_sizes) - part_sizes
        index = np.repeat(starts[first:last] - offsets, part_sizes) + np.arange(
            int(part_sizes.sum())
        )
        values = lines.out[index]
        sums = np.add.reduceat(values * values, offsets)
        peaks = np.maximum.reduceat(np.abs(values), offsets)
        if repair is not None:
            rho = np.array([mu * nu for _, _, mu, nu in segments[first:last]])
            for unsafe in np.flatnonzero(~(peaks * rho <= SAFE_LOGIT)):  # NaN counts as unsafe
                part = slice(int(offsets[unsafe]), int(offsets[unsafe] + part_sizes[unsafe]))
                segment = segments[first + int(unsafe)]
                lines.out[index[part]] = values[part] = repair(segment, values[part])
                sums[unsafe] = float(np.sum(values[part] ** 2))
                peaks[unsafe] = float(np.max(np.abs(values[part])))
        # plain Python numbers for the per-segment loop (numpy scalars cost ~3x as much each)
        counts, sum_list, peak_list = part_sizes.tolist(), sums.tolist(), peaks.tolist()
        for k in range(last - first):
            tracker = trackers[segments[first + k][0]]
            if type(tracker).observe is ScaleTracker.observe:
                tracker.observe_summary(counts[k], sum_list[k], peak_list[k])
            else:
                tracker.observe(values[offsets[k] : offsets[k] + part_sizes[k]])
        first = last
