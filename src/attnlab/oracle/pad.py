"""A query pad: a batch buffer whose sequences' hashes are kept as its entries change.

The Oracle proves a batch finite and finds its repeated sequences with one pass over it (the row
hashes of `checks.row_hashes`). A learner that rewrites only a few entries of each query between
calls (the single-head reader moves one entry a query) still pays that whole pass per call: at
d = 512 it is 3-4 points of the learner's share of the target's time. A pad keeps each slot's
hash, token by token, as it is written: copying a row adds its precomputed hash, moving one entry
adds key * (new - old), and a dense write is hashed once, rows written and nothing more. The
Oracle (`Oracle(pad.batch(n))`, `DeviceOracle(pad.batch(n))`) then takes those hashes instead of
its own pass.

Why the Oracle's guarantees still hold when it takes them:
- finite: a NaN or infinite entry makes its slot's hash non-finite when it is written (NaN and
  +-inf survive every product by a positive weight and every sum), and it stays non-finite until
  the token is hashed afresh from its entries; a non-finite hash sends the Oracle to its own
  entry-by-entry check. A finite hash therefore proves a finite sequence.
- repeats: hashes only nominate candidates. Sequences are merged only when their bytes agree,
  so a hash that drifted by rounding can at worst miss a merge (the repeat is then paid twice),
  never merge two different sequences. The drift is far inside the grouping tolerance
  (`journal.NEAR`, 6e-8): at most 3.4e-15 of the largest hash over every oracle call of 1024 x 64,
  512 full-rank and 2048 x 128 single-head extractions.
- counting is the Oracle's, as always: it counts the sequences handed to the target.

Writes go through the methods; `dense(token, n)` hands out the rows to be written in place and
must be followed by `written(token, n)`, which hashes them (what the Oracle's pass would have done
for that token).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from attnlab.oracle.checks import row_key


class QueryPad:
    """A (chunk, tokens, d) float64 buffer with per-slot, per-token hashes.

    `tensor`: where the memory lives (a CPU torch tensor to share with a DeviceOracle; default a
    fresh numpy array, all zeros). A tensor's entries are taken as they are, unknown: their hashes
    start NaN (a batch of slots not yet written is checked by the Oracle's own pass), which spares
    a pass over memory the writer fills anyway.
    """

    def __init__(self, chunk: int, tokens: int, d: int, tensor: Any = None):
        self.chunk, self.tokens, self.d = int(chunk), int(tokens), int(d)
        import torch  # here, not at import: the Oracle's module imports this one, torch is heavy

        self._torch = torch
        shape = (self.chunk, self.tokens, self.d)
        if tensor is None:
            self.tensor: Any = np.zeros(shape)
            self.X = self.tensor
        else:
            if tuple(tensor.shape) != shape or tensor.dtype != torch.float64:
                raise ValueError(f"a pad's tensor must be float64 of shape {shape}")
            if tensor.device.type != "cpu":
                raise ValueError(
                    "a pad keeps its hashes on the host: its tensor must be on the CPU"
                )
            self.tensor = tensor
            self.X = tensor.numpy()
        self._flat = self.X.reshape(-1)
        self.key = row_key(self.tokens * self.d).reshape(self.tokens, self.d)
        self._key_sums = self.key.sum(axis=1)
        # the hash of each slot's token t: X[k, t] @ key[t]; the slot's hash is their sum
        self.parts = np.full((self.tokens, self.chunk), 0.0 if tensor is None else np.nan)
        self._starts = np.arange(self.chunk, dtype=np.int64)[None, :] * (self.tokens * self.d)
        self._starts = self._starts + (np.arange(self.tokens, dtype=np.int64) * self.d)[:, None]
        self._batches: dict[int, PadBatch] = {}

    # -- reading -------------------------------------------------------------------------------
    def batch(self, n: int) -> PadBatch:
        """The first n slots, as handed to an Oracle (one object per size)."""
        view = self._batches.get(n)
        if view is None:
            if not 0 < n <= self.chunk:
                raise ValueError(f"a batch of this pad holds 1 to {self.chunk} slots, not {n}")
            view = self._batches[n] = PadBatch(self, n)
        return view

    def hashes(self, n: int) -> np.ndarray:
        """The slots' row hashes (`checks.row_hashes` of X[:n], up to rounding)."""
        return self.parts[:, :n].sum(axis=0)

    # -- writing -------------------------------------------------------------------------------
    def copy_rows(self, token: int, n: int, table: np.ndarray, rows: np.ndarray) -> None:
        """Slots 0..n-1 of `token` = table[rows] (one gather; the table's rows hashed once)."""
        torch = self._torch  # its gather writes a strided view ~5x faster than numpy's fancy copy
        torch.index_select(
            torch.from_numpy(table),
            0,
            torch.from_numpy(rows),
            out=torch.from_numpy(self.X[:n, token]),
        )
        self.parts[token, :n] = (table @ self.key[token])[rows]

    def copy_rows_at(
        self, token: int, slots: np.ndarray, table: np.ndarray, rows: np.ndarray
    ) -> None:
        """Slots `slots` (distinct) of `token` = table[rows]."""
        torch = self._torch
        torch.from_numpy(self.X[:, token]).index_copy_(
            0,
            torch.from_numpy(slots),
            torch.index_select(torch.from_numpy(table), 0, torch.from_numpy(rows)),
        )
        self.parts[token, slots] = table[rows] @ self.key[token]

    def put(self, token: int, n: int, cols: np.ndarray, values) -> None:
        """X[k, token, cols[k]] = values[k] for the slots k = 0..n-1 (one entry each)."""
        self.put_at(token, slice(0, n), cols, values)

    def put_at(self, token: int, slots: np.ndarray | slice, cols: np.ndarray, values) -> None:
        """X[slots[k], token, cols[k]] = values[k] (slots distinct)."""
        index = self._starts[token, slots] + cols
        change = self._flat[index]  # the old entries, turned in place into key * (new - old)
        np.subtract(values, change, out=change)
        change *= self.key[token, cols]
        self.parts[token, slots] += change
        self._flat[index] = values

    def fill(self, token: int, n: int, value: float = 0.0) -> None:
        """Slots 0..n-1 of `token` = value everywhere."""
        self.fill_at(token, slice(0, n), value)

    def fill_at(self, token: int, slots: np.ndarray | slice, value: float = 0.0) -> None:
        """Slots `slots` of `token` = value everywhere."""
        self.X[slots, token] = value
        self.parts[token, slots] = value * self._key_sums[token]

    def dense(self, token: int, n: int) -> np.ndarray:
        """Slots 0..n-1 of `token`, to be written in place; call `written(token, n)` after."""
        return self.X[:n, token]

    def written(self, token: int, n: int) -> None:
        """Hash slots 0..n-1 of `token` afresh from their entries (after a `dense` write)."""
        self._rehash(token, slice(0, n))

    def written_slots(self, slots: slice) -> None:
        """Hash every token of the slots `slots` afresh (after writing them in place)."""
        for token in range(self.tokens):
            self._rehash(token, slots)

    def _rehash(self, token: int, slots: slice) -> None:
        self.parts[token, slots] = self.X[slots, token] @ self.key[token]


class PadBatch:
    """The first n slots of a pad, as an Oracle takes them: the array (or tensor) and its hashes."""

    def __init__(self, pad: QueryPad, n: int):
        self.pad, self.n = pad, n
        self.array = pad.X[:n]
        self.tensor = pad.tensor[:n]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    def hashes(self) -> np.ndarray:
        return self.pad.hashes(self.n)

    def __array__(self, dtype=None, copy=None):
        # numpy consumers (a target handed the batch by mistake, np.asarray) see the queries
        return self.array if dtype is None else self.array.astype(dtype)


__all__ = ["PadBatch", "QueryPad"]
