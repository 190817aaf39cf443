"""The reader's one preallocated query buffer, and what each of its slots already holds.

A probe [(mu a + nu b); nu b] is written into a slot of a (chunk, 2, d) buffer. Much of what a
stage writes repeats from one chunk to the next: a row read (a = a_p fixed, b = e_j) is one
constant row mu a_p plus one entry per query, and its second token nu e_j is zero but for one
entry; a column read's second token nu q_j is the same row for the whole line. Rewriting those
rows costs a pass over the buffer per chunk, as much as the Oracle's check of it. The reader
deals each line out to a fixed block of slots (`dealing`), so a slot keeps its line from chunk
to chunk, and the buffer remembers, per slot and token, which constant row it holds (`key`) and
which single entry differs from it (`col`); a write that finds the row it needs already there
only moves that entry: O(1) per query instead of O(d). Every chunk is written by a few
vectorised calls for all its slots (`write_row_reads`, `write_column_reads`,
`write_coordinate_reads`, `write_plain`), and every slot ends up holding exactly what the same
call writes into a buffer that held nothing (a test checks this after arbitrary sequences of
writes).

On the host the buffer is a `QueryPad` (oracle/pad.py) and every write goes through it, so it keeps
each slot's row hash as entries move (a moved entry adds key * (new - old)): an Oracle handed
`batch(n)` takes those hashes instead of its own pass over the batch, which at d = 512 was 3-4
points of the learner's share of the target's time.

On a GPU the reader packs segments one after another and each is written by the device writer
(`write`).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from attnlab.extract.single_head.directions import (
    AlignedBasis,
    CoordinateDirections,
    Directions,
)
from attnlab.oracle import Oracle
from attnlab.oracle.pad import QueryPad

Index = int | np.ndarray

UNKNOWN = -2  # the slot's token holds an arbitrary row
ZERO = -1  # the slot's token holds the zero row (but for its `col` entry)
NO_COL = -1


class QueryBuffer:
    """A (chunk, 2, d) float64 buffer (numpy, or a torch tensor on the oracle's device)."""

    def __init__(self, oracle, chunk: int, d: int):
        self.chunk, self.d = chunk, d
        device = getattr(oracle, "device", None)
        self.device_writer: Any = None
        self.pad: QueryPad | None = None  # host memory: every write goes through the pad
        self.tensor: Any  # what is handed to the oracle: numpy, or a torch tensor
        self.view: Any  # what the probes are written through: numpy where the memory is host
        if device is not None:  # a DeviceOracle: probes are written on its device
            import torch

            from attnlab.extract.single_head.device_probes import DeviceWriter

            self.tensor = torch.empty((chunk, 2, d), dtype=torch.float64, device=device)
            if self.tensor.device.type == "cpu":
                # host memory: the pad writes straight into the tensor's storage
                self.pad = QueryPad(chunk, 2, d, self.tensor)
                self.view = self.pad.X
            else:
                self.device_writer = DeviceWriter(device)
                self.view = self.tensor
        else:
            self.pad = QueryPad(chunk, 2, d)
            self.tensor = self.view = self.pad.X
        self.host = self.device_writer is None
        # an Oracle takes the pad's batches with the hashes the pad kept (no pass over each batch,
        # oracle/pad.py); anything else is handed the plain array or tensor
        self._hand_pad = isinstance(oracle, Oracle)
        # what each slot's two tokens hold
        self.key = np.full((2, chunk), UNKNOWN, dtype=np.int64)
        self.col = np.full((2, chunk), NO_COL, dtype=np.int64)
        self._next_key = 0
        self._arange = np.arange(chunk)
        self._last: tuple | None = None  # (kind, n, keys, rows, table) of the last write
        self._batches: dict[int, Any] = {}

    def batch(self, n: int):
        """The first n slots, as handed to the oracle (the view is made once per size)."""
        view = self._batches.get(n)
        if view is None:
            pad = self.pad if self.host and self._hand_pad else None
            view = self._batches[n] = pad.batch(n) if pad is not None else self.tensor[:n]
        return view

    # -- host: a whole chunk at a time ----------------------------------------------------------
    def new_keys(self, count: int) -> int:
        """The first of `count` fresh keys for constant rows (keys are never reused, so a slot
        holding a row from an earlier stage or call never matches)."""
        first = self._next_key
        self._next_key += count
        return first

    def write_row_reads(
        self,
        n: int,
        keys: np.ndarray,
        rows: np.ndarray,
        table: np.ndarray,
        cols: np.ndarray,
        nu: np.ndarray,
    ) -> None:
        """Slots 0..n-1 = [table[rows[k]] + nu[k] e_cols[k]; nu[k] e_cols[k]] (a row read: the
        first token's constant row is table row rows[k], known by key keys[k])."""
        pad = cast(QueryPad, self.pad)
        flat_table, row_start = table.reshape(-1), rows * table.shape[1]
        if self._repeats("row", n, keys, rows, table):
            # the last write was the same row reads' previous chunk: slot k holds
            # [table[rows[k]] but for entry col0[k]; zero but for entry col1[k]], so only those
            # two entries move back
            c0, c1 = self.col[0, :n], self.col[1, :n]
            pad.put(0, n, c0, flat_table[row_start + c0])
            pad.put(1, n, c1, 0.0)
        else:
            self._hold(0, n, keys, rows, table)
            self._hold_zero(1, n)
        pad.put(0, n, cols, flat_table[row_start + cols] + nu)
        pad.put(1, n, cols, nu)
        self.col[0, :n] = cols
        self.col[1, :n] = cols
        self._last = ("row", n, keys, rows, table)

    def write_column_reads(
        self,
        n: int,
        keys: np.ndarray,
        rows: np.ndarray,
        table: np.ndarray,
        a_dirs: Directions,
        ai: np.ndarray,
        mu: np.ndarray,
        block: int | None = None,
    ) -> None:
        """Slots 0..n-1 = [mu[k] a_ai[k] + table[rows[k]]; table[rows[k]]] (a column read: the
        second token's constant row, by key keys[k]). `block`: the slots are table.shape[0]
        blocks of `block` slots, block i holding row i (one batched product writes them)."""
        pad = cast(QueryPad, self.pad)
        if not self._repeats("column", n, keys, rows, table):  # else it holds them already
            self._hold(1, n, keys, rows, table)
        X0 = pad.dense(0, n)
        if block is not None and isinstance(a_dirs, AlignedBasis):
            a_dirs.write_scaled_plus_blocks(X0, ai, mu, table, block)
        else:
            a_dirs.write_scaled_plus(X0, ai, mu, pad.X[:n, 1])
        pad.written(0, n)
        self.key[0, :n] = UNKNOWN
        self._last = ("column", n, keys, rows, table)

    def write_shifted_column_reads(
        self,
        n: int,
        keys: np.ndarray,
        rows: np.ndarray,
        first_table: np.ndarray,
        table: np.ndarray,
        ai: np.ndarray,
        mu: np.ndarray,
    ) -> None:
        """Slots 0..n-1 = [first_table[rows[k]] + mu[k] e_ai[k]; table[rows[k]]]: a column read
        along `ShiftedCoordinates` (first_table = mu s + table, see `shifted_rows`), whose first
        token is a constant row plus one moving entry, kept and moved as a row read's is."""
        pad = cast(QueryPad, self.pad)
        flat_first, row_start = first_table.reshape(-1), rows * first_table.shape[1]
        if self._repeats("shifted", n, keys, rows, table):
            c0 = self.col[0, :n]
            pad.put(0, n, c0, flat_first[row_start + c0])
        else:
            self._hold(0, n, keys, rows, first_table)
            self._hold(1, n, keys, rows, table)
        pad.put(0, n, ai, flat_first[row_start + ai] + mu)
        self.col[0, :n] = ai
        self._last = ("shifted", n, keys, rows, table)

    def _repeats(self, kind: str, n: int, keys, rows, table) -> bool:
        """Whether the last write was of this kind, to the same n slots, with these very arrays
        (the reader passes the same objects for every chunk of one layout, and never changes
        them): then each slot holds that write's constant row, and what moved is known."""
        last = self._last
        return (
            last is not None
            and last[0] == kind
            and last[1] == n
            and last[2] is keys
            and last[3] is rows
            and last[4] is table
        )

    def write_coordinate_reads(
        self,
        n: int,
        a_dirs: Directions,
        ai: np.ndarray,
        mu: np.ndarray,
        cols: np.ndarray,
        nu: np.ndarray,
    ) -> None:
        """Slots 0..n-1 = [mu[k] a_ai[k] + nu[k] e_cols[k]; nu[k] e_cols[k]] (a full-rank read)."""
        pad = cast(QueryPad, self.pad)
        self._last = None
        self._hold_zero(1, n)
        pad.put(1, n, cols, nu)
        self.col[1, :n] = cols
        X0 = pad.dense(0, n)
        a_dirs.write_scaled(X0, ai, mu)
        X0[self._arange[:n], cols] += nu
        pad.written(0, n)
        self.key[0, :n] = UNKNOWN

    def write_plain(
        self,
        n: int,
        a_dirs: Directions,
        ai: np.ndarray,
        mu: np.ndarray,
        b_dirs: Directions,
        bi: np.ndarray,
        nu: np.ndarray,
    ) -> None:
        """Slots 0..n-1 = [mu[k] a_ai[k] + nu[k] b_bi[k]; nu[k] b_bi[k]], nothing reused."""
        pad = cast(QueryPad, self.pad)
        X0, X1 = pad.dense(0, n), pad.dense(1, n)
        self._last = None
        b_dirs.write_scaled(X1, bi, nu)
        a_dirs.write_scaled(X0, ai, mu)
        if isinstance(b_dirs, CoordinateDirections):
            X0[self._arange[:n], bi] += nu
        else:
            X0 += X1
        pad.written(0, n)
        pad.written(1, n)
        self.key[:, :n] = UNKNOWN

    def _hold(
        self, token: int, n: int, keys: np.ndarray, rows: np.ndarray, table: np.ndarray
    ) -> None:
        """Make slot k's token hold table[rows[k]] exactly: slots holding another key are
        rewritten, slots holding it get their one differing entry put back."""
        pad = cast(QueryPad, self.pad)
        held, cols = self.key[token, :n], self.col[token, :n]
        stale = np.flatnonzero(held != keys)
        if 2 * stale.size >= n:
            # one gather of every slot (torch's, ~5x numpy's fancy copy into a strided view)
            # beats rewriting the stale half of them
            pad.copy_rows(token, n, table, rows)
        else:
            if stale.size:
                pad.copy_rows_at(token, stale, table, rows[stale])
                cols[stale] = NO_COL
            moved = np.flatnonzero(cols != NO_COL)
            if moved.size:
                c = cols[moved]
                pad.put_at(token, moved, c, table[rows[moved], c])
        held[:] = keys
        cols[:] = NO_COL

    def _hold_zero(self, token: int, n: int) -> None:
        """Make the token of slots 0..n-1 the zero row exactly."""
        pad = cast(QueryPad, self.pad)
        held, cols = self.key[token, :n], self.col[token, :n]
        stale = np.flatnonzero(held != ZERO)
        if 2 * stale.size >= n:  # one fill beats a fancy write to half the slots
            pad.fill(token, n)
        else:
            if stale.size:
                pad.fill_at(token, stale)
                cols[stale] = NO_COL
            moved = np.flatnonzero(cols != NO_COL)
            if moved.size:
                pad.put_at(token, moved, cols[moved], 0.0)
        held[:] = ZERO
        cols[:] = NO_COL

    # -- device: one segment at a time ---------------------------------------------------------
    def write(
        self,
        slots: slice,
        a_dirs: Directions,
        ai: Index,
        mu: float,
        b_dirs: Directions,
        bi: Index,
        nu: float,
    ) -> None:
        """Slots `slots` = the probes for (ai, bi), one segment (the device writer, or numpy)."""
        X0, X1 = self.view[slots, 0], self.view[slots, 1]
        self._last = None
        if self.host:  # the plain writer (the host reader deals chunks out instead, see above)
            write_queries(X0, X1, a_dirs, ai, mu, b_dirs, bi, nu)
            cast(QueryPad, self.pad).written_slots(slots)
            self.key[:, slots] = UNKNOWN
        else:
            self.device_writer.write_queries(X0, X1, a_dirs, ai, mu, b_dirs, bi, nu)


def write_queries(
    X0: np.ndarray,
    X1: np.ndarray,
    a_dirs: Directions,
    ai: Index,
    mu: float,
    b_dirs: Directions,
    bi: Index,
    nu: float,
) -> None:
    """X0 = mu a + nu b, X1 = nu b for the direction pairs (ai, bi), in as few passes as possible.

    The plain writer (whatever the buffer held before). A coordinate b (nu e_j) is added to X0 as
    c scalars, not a pass over the rows; a constant b rides along in the a-part's matrix product.
    """
    a_constant, b_constant = isinstance(ai, (int, np.integer)), isinstance(bi, (int, np.integer))
    if isinstance(b_dirs, CoordinateDirections):
        if a_constant:
            a_dirs.write_constant(X0, int(ai), mu)
        else:
            a_dirs.write(X0, cast(np.ndarray, ai), mu)
        rows = np.arange(X0.shape[0])
        X0[rows, bi] += nu
        X1.fill(0.0)
        X1[rows, bi] = nu
        return
    if b_constant:
        b_dirs.write_constant(X1, int(bi), nu)
        if a_constant:
            a_dirs.write_constant(X0, int(ai), mu)
            X0 += X1
        else:
            a_dirs.write_plus(X0, cast(np.ndarray, ai), mu, X1[0])
        return
    b_dirs.write(X1, cast(np.ndarray, bi), nu)
    if a_constant:
        a_dirs.write_constant(X0, int(ai), mu)
    else:
        a_dirs.write(X0, cast(np.ndarray, ai), mu)
    X0 += X1
