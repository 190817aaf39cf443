"""The reader's one preallocated query buffer, and what each of its slots already holds.

A probe [(mu a + nu b); nu b] is written into a slot of a (chunk, 2, d) buffer. Much of what a
stage writes repeats from one chunk to the next: a row read (a = a_p fixed, b = e_j) is one
constant row mu a_p plus one entry per query, and its second token nu e_j is zero but for one
entry; a column read's second token nu q_j is the same row for the whole line. Rewriting those
rows costs a pass over the buffer per chunk, as much as the Oracle's check of it. So the buffer
remembers, per slot and token, which constant row it holds (`key`) and which single entry
differs from it (`col`); a write that finds the row it needs already there only moves that
entry: O(1) per query instead of O(d). Every slot still ends up holding the probe the plain
writer (`write_queries`) writes, with the same arithmetic, whatever it held before.

Many short segments (the warm-up blocks: 1, 4, ... queries per line) are written together, a
scale per row (`write_rows`), instead of a few Python calls per line. On a GPU each segment is
written by the device writer.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from attnlab.extract.single_head.directions import CoordinateDirections, Directions

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
        self.tensor: Any  # what is handed to the oracle: numpy, or a torch tensor
        self.view: Any  # what the probes are written through: numpy where the memory is host
        if device is not None:  # a DeviceOracle: probes are written on its device
            import torch

            from attnlab.extract.single_head.device_probes import DeviceWriter

            self.tensor = torch.empty((chunk, 2, d), dtype=torch.float64, device=device)
            if self.tensor.device.type == "cpu":
                # host memory: numpy writes straight into the tensor's storage; the oracle is still
                # handed the tensor
                self.view = self.tensor.numpy()
            else:
                self.device_writer = DeviceWriter(device)
                self.view = self.tensor
        else:
            self.tensor = np.empty((chunk, 2, d))
            self.view = self.tensor
        self.host = self.device_writer is None
        # what each slot's two tokens hold
        self.key = np.full((2, chunk), UNKNOWN, dtype=np.int64)
        self.col = np.full((2, chunk), NO_COL, dtype=np.int64)
        self._table = np.empty((0, d))  # the remembered constant rows, by key
        self._count = 0
        self._names: dict[tuple, tuple[int, Directions]] = {}

    def batch(self, n: int):
        return self.tensor[:n]

    def start(self) -> None:
        """A new set of lines: forget the constant rows of the last one (slots holding one become
        UNKNOWN; the zero rows stay)."""
        self._names.clear()
        self._count = 0
        self.key[self.key >= 0] = UNKNOWN

    # -- host ------------------------------------------------------------------------------------
    def write_rows(
        self,
        slots: slice,
        a_dirs: Directions,
        ai: np.ndarray,
        mu: np.ndarray,
        b_dirs: Directions,
        bi: np.ndarray,
        nu: np.ndarray,
    ) -> None:
        """Slots `slots` = probes with a scale pair (mu[k], nu[k]) per row (host buffers only)."""
        X0, X1 = self.view[slots, 0], self.view[slots, 1]
        b_dirs.write_scaled(X1, bi, nu)
        a_dirs.write_scaled(X0, ai, mu)
        if isinstance(b_dirs, CoordinateDirections):
            X0[np.arange(X0.shape[0]), bi] += nu
        else:
            X0 += X1
        self.key[:, slots] = UNKNOWN

    def _write_host(self, slots, a_dirs, ai, mu, b_dirs, bi, nu) -> None:
        X0, X1 = self.view[slots, 0], self.view[slots, 1]
        a_constant = isinstance(ai, (int, np.integer))
        b_constant = isinstance(bi, (int, np.integer))
        n = X0.shape[0]
        rows = np.arange(n)
        if isinstance(b_dirs, CoordinateDirections):
            cols = np.full(n, int(bi)) if b_constant else cast(np.ndarray, bi)
            self._settle(1, slots, ZERO)  # X1 = nu e_j
            X1[rows, cols] = nu
            self.col[1, slots] = cols
            if a_constant:  # X0 = mu a (the same row) + nu e_j
                key = self._remember(a_dirs, int(ai), mu)
                self._settle(0, slots, key)
                X0[rows, cols] = self._table[key, cols] + nu
                self.col[0, slots] = cols
            else:
                a_dirs.write(X0, cast(np.ndarray, ai), mu)
                X0[rows, cols] += nu
                self.key[0, slots] = UNKNOWN
            return
        if b_constant and not a_constant:  # X1 = nu b (the same row), X0 = mu a_k + nu b
            key = self._remember(b_dirs, int(bi), nu)
            self._settle(1, slots, key)
            a_dirs.write_plus(X0, cast(np.ndarray, ai), mu, self._table[key])
            self.key[0, slots] = UNKNOWN
            return
        write_queries(X0, X1, a_dirs, ai, mu, b_dirs, bi, nu)
        self.key[:, slots] = UNKNOWN

    def _remember(self, dirs: Directions, i: int, scale: float) -> int:
        """The key of the constant row scale * dirs[i] (arithmetic of `write_constant`), made once
        per set of lines."""
        name = (id(dirs), i, scale)
        hit = self._names.get(name)
        if hit is not None and hit[1] is dirs:
            return hit[0]
        key = self._count
        if key == self._table.shape[0]:  # the table grows by doubling
            grown = np.empty((max(8, 2 * key), self.d))
            grown[:key] = self._table[:key]
            self._table = grown
        self._table[key] = dirs.row_scaled(i, scale)
        self._names[name] = (key, dirs)
        self._count += 1
        return key

    def _settle(self, token: int, slots: slice, key: int) -> None:
        """Make every slot's token hold constant row `key` (ZERO or a remembered one): rows holding
        another are rewritten, rows holding it get their one differing entry put back."""
        X = self.view[slots, token]
        held, cols = self.key[token, slots], self.col[token, slots]
        stale = np.flatnonzero(held != key)
        fill = (
            (lambda Y: Y.fill(0.0)) if key == ZERO else (lambda Y: np.copyto(Y, self._table[key]))
        )
        if stale.size == held.size:
            fill(X)
        else:
            if stale.size:
                breaks = np.flatnonzero(np.diff(stale) != 1) + 1
                for first, last in zip([0, *breaks], [*breaks, stale.size], strict=True):
                    fill(X[stale[first] : stale[last - 1] + 1])
            moved = np.flatnonzero((held == key) & (cols != NO_COL))
            if moved.size:
                X[moved, cols[moved]] = 0.0 if key == ZERO else self._table[key, cols[moved]]
        self.key[token, slots] = key
        self.col[token, slots] = NO_COL

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
        """Slots `slots` = the probes for (ai, bi), written now (the device writer, or numpy)."""
        X0, X1 = self.view[slots, 0], self.view[slots, 1]
        if self.host:
            self._write_host(slots, a_dirs, ai, mu, b_dirs, bi, nu)
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
