"""The Oracle: the only door between a learner and a target.

It validates every query, counts one query per sequence (also inside a batch), enforces the
budget before anything is sent, applies the noise model to the answers, journals what it was
answered, and refuses to hand back NaN, infinite or misshapen outputs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from attnlab.errors import BudgetExhausted, OracleError, QueryShapeError
from attnlab.oracle.journal import QueryJournal, query_key

Target = Callable[[np.ndarray], np.ndarray]


class NoiseModel(Protocol):
    """Turns the target's exact answers into what the learner sees (noisy, rounded, ...)."""

    def __call__(self, y: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


def torch_target(module: torch.nn.Module) -> Target:
    """Wrap a module mapping (B, N, d) tensors to (B,) as a numpy target, in the module's dtype."""
    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")

    def answer(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.as_tensor(X, dtype=dtype, device=device))
        return out.detach().to("cpu", torch.float64).numpy()

    return answer


def _as_numpy_target(target) -> Target:
    if isinstance(target, torch.nn.Module):
        return torch_target(target)
    if not callable(target):
        raise TypeError(f"an oracle's target must be callable or a torch.nn.Module, got {type(target).__name__}")

    def answer(X: np.ndarray) -> np.ndarray:
        out = target(X)
        if isinstance(out, torch.Tensor):
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float64)

    return answer


class Oracle:
    """Black-box value queries to `target`: one sequence in, one real number out.

    Parameters
    ----------
    target : callable or torch.nn.Module
        Maps a float array of shape (B, N, d) to shape (B,).
    d : int, optional
        Token width. If omitted it is read from `target.d` when the target has one, else fixed
        by the first query.
    budget : int, optional
        The most queries that may be sent to the target (answers replayed from the journal are free).
    noise : NoiseModel, optional
        Applied to every fresh answer (see `attnlab.oracle.noise`).
    journal : path, optional
        A SQLite file recording every answered query; answers found there are not paid for again.
    seed : int, optional
        Seeds the noise model's randomness.
    max_batch : int, optional
        Split batches into calls of at most this many sequences (for targets with request limits).
    """

    def __init__(self, target, d: int | None = None, budget: int | None = None, *,
                 noise: NoiseModel | None = None, journal: str | Path | QueryJournal | None = None,
                 seed: int | None = None, max_batch: int | None = None):
        if d is not None and (int(d) != d or d < 1):
            raise ValueError(f"d must be a positive integer, got {d!r}")
        if budget is not None and (int(budget) != budget or budget < 0):
            raise ValueError(f"budget must be a non-negative integer or None, got {budget!r}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self._target = _as_numpy_target(target)
        if d is None and isinstance(getattr(target, "d", None), int):
            d = target.d  # attnlab's own models know their token width
        self.d = None if d is None else int(d)
        self.budget = None if budget is None else int(budget)
        self.noise = noise
        self.max_batch = max_batch
        self.rng = np.random.default_rng(seed)
        if journal is None or isinstance(journal, QueryJournal):
            self.journal = journal
        else:
            self.journal = QueryJournal(journal)
        self._queries = 0
        self._paid = 0
        self._lock = threading.Lock()

    @classmethod
    def http(cls, url: str, key: str, *, timeout: float = 30.0, retries: int = 5, transport=None,
             **oracle_kwargs) -> "Oracle":
        """An Oracle whose target is an `attnlab serve` endpoint, reached with API key `key`.

        d is read from the service (GET /v1/info). The service enforces its own per-key budget and
        answers a spent one with BudgetExhausted; `budget=` here adds a local cap on top. Transient
        failures are retried `retries` times without being charged twice (Idempotency-Key). The
        client is `oracle.http_target` (counters: requests, charged, retried, replayed, budget_left).
        """
        from attnlab.serve.client import HttpTarget

        target = HttpTarget(url, key, timeout=timeout, retries=retries, transport=transport)
        served_d = target.d
        d = oracle_kwargs.pop("d", None)
        if d is not None and d != served_d:
            raise QueryShapeError(f"d = {d} was asked for, but the service at {url} serves a target with d = {served_d}")
        oracle = cls(target, d=served_d, **oracle_kwargs)
        oracle.http_target = target
        return oracle

    # -- counters -------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Sequences answered so far (fresh or replayed from the journal)."""
        return self._queries

    @property
    def paid(self) -> int:
        """Sequences actually sent to the target; the budget counts these."""
        return self._paid

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self._paid

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else str(self.budget)
        return f"Oracle(d={self.d}, queries={self._queries}, paid={self._paid}, budget={budget})"

    # -- querying -------------------------------------------------------------------------
    def __call__(self, X) -> float | np.ndarray:
        """Answer one sequence (N, d) with a float, or a batch (B, N, d) with an array (B,)."""
        X = self._validate(X)
        single = X.ndim == 2
        batch = X[None] if single else X
        answers = self._answer([batch])[0]
        return float(answers[0]) if single else answers

    def query_many(self, sequences: Sequence) -> np.ndarray:
        """Answer sequences of different lengths, in order; each counts as one query."""
        seqs = [self._validate(s, single_only=True) for s in sequences]
        if not seqs:
            return np.empty(0)
        lengths = np.array([s.shape[0] for s in seqs])
        groups, positions = [], []
        for n in np.unique(lengths):
            idx = np.flatnonzero(lengths == n)
            groups.append(np.stack([seqs[i] for i in idx]))
            positions.append(idx)
        out = np.empty(len(seqs))
        for idx, answers in zip(positions, self._answer(groups)):
            out[idx] = answers
        return out

    def _validate(self, X, single_only: bool = False) -> np.ndarray:
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        try:
            X = np.asarray(X, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise QueryShapeError(f"a query must be a real array of shape (N, d) or (B, N, d): {exc}") from None
        allowed = (2,) if single_only else (2, 3)
        if X.ndim not in allowed:
            want = "(N, d)" if single_only else "(N, d) or a batch (B, N, d)"
            raise QueryShapeError(f"a query must have shape {want}; got shape {X.shape}")
        if X.shape[-2] < 1:
            raise QueryShapeError(f"a query needs at least one token (N >= 1); got shape {X.shape}")
        if self.d is None:
            self.d = int(X.shape[-1])
        elif X.shape[-1] != self.d:
            raise QueryShapeError(f"tokens must have width d = {self.d}; got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise QueryShapeError("a query contains NaN or infinite entries; queries must be finite real arrays")
        return X

    def _answer(self, groups: list[np.ndarray]) -> list[np.ndarray]:
        """Answer uniform-length batches: journal first, then one budget check, then the target."""
        with self._lock:
            plans = []
            fresh_total = 0
            for batch in groups:
                answers = np.empty(batch.shape[0])
                keys = [query_key(q) for q in batch] if self.journal is not None else None
                missing = np.arange(batch.shape[0])
                if keys is not None and batch.shape[0]:
                    known = self.journal.lookup(keys)
                    hit = np.array([k in known for k in keys], dtype=bool)
                    answers[hit] = [known[k] for k, h in zip(keys, hit) if h]
                    missing = np.flatnonzero(~hit)
                plans.append((batch, answers, keys, missing))
                fresh_total += missing.size
            if self.budget is not None and self._paid + fresh_total > self.budget:
                raise BudgetExhausted(self._paid, self.budget, fresh_total)
            for batch, answers, keys, missing in plans:
                if missing.size == batch.shape[0]:  # nothing replayed: no copy of a large batch
                    answers[:] = self._ask_target(batch, keys)
                elif missing.size:
                    answers[missing] = self._ask_target(batch[missing], [keys[i] for i in missing])
                self._queries += batch.shape[0]
            return [answers for _, answers, _, _ in plans]

    def _ask_target(self, batch: np.ndarray, keys: list[bytes] | None) -> np.ndarray:
        step = self.max_batch or batch.shape[0]
        out = np.empty(batch.shape[0])
        for start in range(0, batch.shape[0], step):
            part = batch[start:start + step]
            y = self._call_target(part)
            self._paid += part.shape[0]
            if self.noise is not None:
                y = np.asarray(self.noise(y, part, self.rng), dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(y))
            good = np.flatnonzero(np.isfinite(y))
            if self.journal is not None and good.size:
                part_keys = keys[start:start + step]
                self.journal.record([part_keys[i] for i in good], part[good], y[good])
            if bad.size:
                i = int(bad[0])
                raise OracleError(
                    f"the target answered {y[i]} for query {start + i} of this batch "
                    f"(shape {part.shape[1:]}, first token {np.array2string(part[i, 0, :4], precision=3)}...), "
                    f"and {bad.size} answer(s) in the batch were not finite. The queries were counted; "
                    f"finite answers were kept. Check the target's numerics (e.g. overflow in its scores)."
                )
            out[start:start + step] = y
        return out

    def _call_target(self, X: np.ndarray) -> np.ndarray:
        y = self._target(X)
        if not isinstance(y, np.ndarray):
            y = np.asarray(y, dtype=np.float64)
        if y.shape != (X.shape[0],):
            raise OracleError(
                f"the target must return one number per sequence, shape ({X.shape[0]},) for a batch of "
                f"shape {X.shape}; it returned shape {y.shape}. Make it reduce to a scalar per sequence."
            )
        return y.astype(np.float64, copy=False)

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> "Oracle":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
