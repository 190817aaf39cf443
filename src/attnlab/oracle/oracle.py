"""The Oracle: the only door between a learner and a target.

It validates every query, answers identical queries of one batch once, counts every sequence it
hands the target as paid (whatever the target then does), enforces the budget before anything is
sent, applies the noise model to the answers, journals what it was answered, and refuses to hand
back NaN, infinite, complex or misshapen outputs. A `QueryPad` batch (oracle/pad.py) is checked
with the hashes the pad kept as it was written, instead of a pass over it.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from attnlab.errors import (
    AttnlabError,
    BudgetExhausted,
    JournalError,
    OracleError,
    OracleTimeout,
    QueryShapeError,
)
from attnlab.oracle.binding import (
    binding_record,
    check_identity,
    check_probes,
    open_journal,
    probe_queries,
    stored_probes,
)
from attnlab.oracle.checks import (
    check_query_shape,
    far_apart,
    one_answer_each,
    positive_seconds,
    valid_query_hashed,
    whole_number,
)
from attnlab.oracle.journal import QueryJournal, distinct_queries, query_key
from attnlab.oracle.pad import PadBatch
from attnlab.oracle.sampling import group_by_length
from attnlab.oracle.targets import (
    CallTimedOut,
    Target,
    as_numpy_target,
    call_with_timeout,
    declared_width,
    real_answers,
    torch_target,
)

if TYPE_CHECKING:
    from attnlab.oracle.http import HttpTarget

__all__ = ["NoiseModel", "Oracle", "Target", "as_numpy_target", "torch_target"]

# Under a journal a kill -9 re-pays at most the chunk in flight. Each chunk costs one SQLite commit
# (~0.7 ms here): next to a cheap local target that is tens of microseconds per query, next to an
# HTTP round trip it is noise (benchmarks/reliability.py measures the cost per chunk size).
JOURNAL_CHUNK = 64


class NoiseModel(Protocol):
    """Turns the target's exact answers into what the learner sees (noisy, rounded, ...)."""

    def __call__(self, y: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...


class Oracle:
    """Black-box value queries to `target`: one sequence in, one real number out.

    Parameters
    ----------
    target : callable or torch.nn.Module
        Maps a float array of shape (B, N, d) to shape (B,).
    d : int, optional
        Token width. If omitted it is read from `target.d` when the target has one, else fixed
        by the first query. Declaring a width the target contradicts (its `.d`) is an error.
    budget : int, optional
        The most sequences that may be sent to the target (`paid`); replayed answers are free.
    noise : NoiseModel, optional
        Applied to every fresh answer (see `attnlab.oracle.noise`).
    journal : path or QueryJournal, optional
        A SQLite file recording every answered query; answers found there are not paid for again.
        The journal is bound to its target (see below) and locked to this process while open.
    seed : int, optional
        Seeds the noise model's randomness.
    max_batch : int, optional
        Split batches into calls of at most this many sequences (for targets with request limits).
    journal_id : str, optional
        A name for the target, stored in a new journal and required to match when it is reopened.
    journal_probes : int
        How many fixed probe queries (of 4 tokens) bind a new journal to its target: they are asked
        (and paid, charged to the budget, not counted in `queries`) when the journal is created and
        asked again each time it is reopened, to check it belongs to this target; default 3, i.e.
        3 paid queries per opening. 0 needs `journal_id` (binding by name only).
    journal_chunk : int
        Under a journal, the most distinct sequences per target call; each chunk is committed to
        the journal before the next is sent, so a kill -9 re-pays at most one chunk.
    timeout : float, optional
        Seconds one target call may take before `OracleTimeout` is raised (the sequences of that
        call count as paid: they were sent). The call then runs on in an abandoned daemon thread,
        because Python cannot kill a thread: a hung target keeps that thread (and what it holds)
        until the process exits, but no longer blocks the caller.

    Counting: `queries` counts every sequence a learner asked for (repeats and replays included);
    `paid` counts the sequences handed to the target, each once, whatever it answered (a wrong
    shape, an exception, complex numbers, NaN, a timeout) plus the journal probes; only a target
    that refuses with BudgetExhausted or QueryShapeError (raised before answering anything, as the
    HTTP client does for 402 and 413) is not charged. Identical sequences within
    one request are answered once and paid once, except without a journal under a noise model that
    declares `random=True` (or declares nothing): there, every repeat is a fresh, paid draw.
    """

    http_target: HttpTarget  # the service client; set only on oracles made by Oracle.http

    def __init__(
        self,
        target,
        d: int | None = None,
        budget: int | None = None,
        *,
        noise: NoiseModel | None = None,
        journal: str | Path | QueryJournal | None = None,
        seed: int | None = None,
        max_batch: int | None = None,
        journal_id: str | None = None,
        journal_probes: int = 3,
        journal_chunk: int = JOURNAL_CHUNK,
        timeout: float | None = None,
    ):
        d = whole_number("d", d, 1, "the token width")
        self.budget = whole_number("budget", budget, 0, "queries; None for no budget")
        self.max_batch = whole_number(
            "max_batch", max_batch, 1, "sequences per target call; None for no split"
        )
        self.journal_probes = whole_number(
            "journal_probes", journal_probes, 0, "probe queries binding a journal"
        )
        self.journal_chunk = whole_number(
            "journal_chunk", journal_chunk, 1, "sequences per call under a journal"
        )
        if journal_id is not None and (not isinstance(journal_id, str) or not journal_id):
            raise ValueError(
                f"journal_id must be a non-empty string naming the target, got {journal_id!r}"
            )
        timeout = positive_seconds("timeout", timeout)
        stated = declared_width(target)
        if d is not None and stated is not None and d != stated:
            raise QueryShapeError(
                f"Oracle(..., d={d}) was declared, but the target ({type(target).__name__}) "
                f"takes tokens of width d = {stated}; declare d={stated} or leave d out"
            )
        self._target = as_numpy_target(target)
        self.d = d if d is not None else stated
        self.noise = noise
        self.timeout = timeout
        self.journal_id = journal_id
        self.rng = np.random.default_rng(seed)
        # Repeats are answered once unless each one is meant to be a fresh noisy draw.
        self._dedupe = journal is not None or not getattr(noise, "random", noise is not None)
        self._queries = 0
        self._paid = 0
        self._answered_once = False
        self._lock = threading.Lock()
        self._bound = False
        self._journal_refused: JournalError | None = None
        self.journal, self._owns_journal = open_journal(
            journal, self.d, journal_id, noise, self.journal_probes
        )

    @classmethod
    def http(
        cls,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        transport=None,
        **oracle_kwargs,
    ) -> Oracle:
        """An Oracle whose target is an `attnlab serve` endpoint, reached with API key `key`.

        d is read from the service (GET /v1/info). The service enforces its own per-key budget and
        answers a spent one with BudgetExhausted; `budget=` here adds a local cap on top. Transient
        failures are retried `retries` times without being charged twice (Idempotency-Key). The
        client is `oracle.http_target` (counters: requests, charged, retried, replayed, budget_left).
        """
        from attnlab.oracle.http import HttpTarget

        target = HttpTarget(url, key, timeout=timeout, retries=retries, transport=transport)
        served_d = target.d
        d = oracle_kwargs.pop("d", None)
        if d is not None and d != served_d:
            raise QueryShapeError(
                f"d = {d} was asked for, but the service at {url} serves a target with d = {served_d}"
            )
        oracle = cls(target, d=served_d, **oracle_kwargs)
        oracle.http_target = target
        return oracle

    # -- counters -------------------------------------------------------------------------
    @property
    def queries(self) -> int:
        """Sequences answered so far (fresh or replayed from the journal; repeats each count)."""
        return self._queries

    @property
    def paid(self) -> int:
        """Sequences actually sent to the target (journal probes included); the budget counts these."""
        return self._paid

    @property
    def remaining(self) -> int | None:
        return None if self.budget is None else self.budget - self._paid

    def require_d(self, who: str) -> int:
        """The token width, or the standard ValueError for an extractor (`who`) that needs it."""
        if self.d is None:
            raise ValueError(
                f"{who} needs the token width: Oracle(target, d=...) (this oracle was not told it, "
                f"and its target does not state it)"
            )
        return self.d

    def __repr__(self) -> str:
        budget = "unlimited" if self.budget is None else str(self.budget)
        return f"Oracle(d={self.d}, queries={self._queries}, paid={self._paid}, budget={budget})"

    # -- querying -------------------------------------------------------------------------
    def __call__(self, X) -> float | np.ndarray:
        """Answer one sequence (N, d) with a float, or a batch (B, N, d) with an array (B,).

        A `QueryPad` batch (`pad.batch(n)`) is taken with the hashes the pad kept (oracle/pad.py):
        no pass over it unless one of them is non-finite.
        """
        if isinstance(X, PadBatch):
            X, hashes = self._validate_pad(X)
        else:
            X, hashes = self._validate(X)
        single = X.ndim == 2
        batch = X[None] if single else X
        if batch.shape[0] == 0:
            return np.empty(0)
        answers = self._answer([batch], [hashes])[0]
        return float(answers[0]) if single else answers

    def query_many(self, sequences: Sequence) -> np.ndarray:
        """Answer sequences of different lengths, in order; each counts as one query."""
        seqs = [self._validate(s, single_only=True)[0] for s in sequences]
        if not seqs:
            return np.empty(0)
        grouped = group_by_length(seqs)
        out = np.empty(len(seqs))
        for (positions, _), answers in zip(grouped, self._answer([b for _, b in grouped])):
            out[positions] = answers
        return out

    def _validate_pad(self, batch: PadBatch) -> tuple[np.ndarray, np.ndarray | None]:
        """A pad's batch checked: its shape, and finite (proved by finite kept hashes; a non-finite
        one means an entry to check, as for any batch)."""
        X, hashes = batch.array, batch.hashes()
        if not np.all(np.isfinite(hashes)):
            return self._validate(X)
        check_query_shape(X.shape, self.d)
        if self.d is None:
            self.d = int(X.shape[-1])
        return X, hashes

    def _validate(self, X, single_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """X checked (shape, finite), and its row hashes where the finite check computed them."""
        X, hashes = valid_query_hashed(X, self.d, single_only)
        if self.d is None:
            self.d = int(X.shape[-1])
        return X, hashes

    def _answer(
        self, groups: list[np.ndarray], hashes: list[np.ndarray | None] | None = None
    ) -> list[np.ndarray]:
        """Answer uniform-length batches: repeats merged, journal first, one budget check, the target.

        `hashes`: each batch's `checks.row_hashes` where already computed (None: computed here).
        """
        with self._lock:
            if self._journal_refused is not None:
                raise self._journal_refused
            if self.journal is not None and not self._bound:
                try:
                    self._bind_journal()
                except JournalError as exc:
                    # This oracle can never use that journal: let another one open it, and say so again.
                    self._journal_refused = exc
                    if self._owns_journal:
                        self.close()
                    raise
            plans = []
            fresh_total = 0
            for g, batch in enumerate(groups):
                inverse = None
                given = None if hashes is None else hashes[g]
                # all distinct when no two hashes are near (one sort proves it): nothing to merge
                if self._dedupe and not (given is not None and far_apart(given)):
                    first, inverse = distinct_queries(batch, given)
                    if first.size == batch.shape[0]:
                        inverse = None  # all distinct: no copy of a large batch
                    else:
                        batch = batch[first]
                answers = np.empty(batch.shape[0])
                keys = [query_key(q) for q in batch] if self.journal is not None else None
                missing = np.arange(batch.shape[0])
                if keys:
                    assert self.journal is not None  # keys are made only under a journal
                    known = self.journal.lookup(keys)
                    if known:
                        hit = np.fromiter((k in known for k in keys), dtype=bool, count=len(keys))
                        answers[hit] = [known[k] for k, h in zip(keys, hit) if h]
                        missing = np.flatnonzero(~hit)
                plans.append((batch, answers, keys, missing, inverse))
                fresh_total += missing.size
            if self.budget is not None and self._paid + fresh_total > self.budget:
                raise BudgetExhausted(self._paid, self.budget, fresh_total)
            results = []
            for batch, answers, keys, missing, inverse in plans:
                if missing.size == batch.shape[0]:
                    answers[:] = self._ask_target(batch, keys)
                elif missing.size:
                    assert keys is not None  # some were found, so there is a journal and keys
                    answers[missing] = self._ask_target(batch[missing], [keys[i] for i in missing])
                results.append(answers if inverse is None else answers[inverse])
                self._queries += results[-1].shape[0]
            return results

    def _ask_target(self, batch: np.ndarray, keys: list[bytes] | None) -> np.ndarray:
        step = self.max_batch or batch.shape[0]
        if self.journal is not None:
            step = min(step, self.journal_chunk)
        out = np.empty(batch.shape[0])
        for start in range(0, batch.shape[0], step):
            part = batch[start : start + step]
            y = self._send(part)
            if self.noise is not None:
                y = one_answer_each(
                    real_answers(self.noise(y, part, self.rng), "the noise model"),
                    part,
                    "noise model",
                )
            good = np.isfinite(y)
            if self.journal is not None and good.any():
                assert keys is not None  # _answer makes keys whenever there is a journal
                part_keys = keys[start : start + step]
                self.journal.record([k for k, g in zip(part_keys, good) if g], part[good], y[good])
            if not good.all():
                bad = np.flatnonzero(~good)
                i = int(bad[0])
                raise OracleError(
                    f"the target answered {y[i]} for query {start + i} of this batch "
                    f"(shape {part.shape[1:]}, first token {np.array2string(part[i, 0, :4], precision=3)}...), "
                    f"and {bad.size} answer(s) in the batch were not finite. The queries were counted; "
                    f"finite answers were kept. Check the target's numerics (e.g. overflow in its scores)."
                )
            out[start : start + step] = y
        return out

    def _send(self, X: np.ndarray) -> np.ndarray:
        """Hand X to the target. From here on its sequences are paid, whatever comes back."""
        self._paid += X.shape[0]
        try:
            y = self._call_target(X)
        except (BudgetExhausted, QueryShapeError):
            self._paid -= X.shape[
                0
            ]  # by contract raised before anything was answered (HTTP 402, 413)
            raise
        except AttnlabError:
            raise
        except Exception as exc:
            hint = ""
            if not self._answered_once:
                hint = (
                    f" The target has not answered this oracle yet: if it takes tokens of another width "
                    f"than d = {self.d}, declare that one (Oracle(target, d=...))."
                )
            raise OracleError(
                f"the target raised {type(exc).__name__}: {exc} for a batch of shape {X.shape}; "
                f"its {X.shape[0]} sequences count as paid.{hint}"
            ) from exc
        y = one_answer_each(y, X, "target")
        self._answered_once = True
        return y

    def _call_target(self, X: np.ndarray) -> np.ndarray:
        if self.timeout is None:
            return self._target(X)
        try:
            return call_with_timeout(self._target, X, self.timeout)
        except CallTimedOut:
            raise OracleTimeout(
                f"the target did not answer a batch of {X.shape[0]} sequences (shape {X.shape}) within "
                f"timeout = {self.timeout:g} s; they count as paid (they were sent). The call was abandoned "
                f"in a daemon thread that Python cannot kill: it ends with the target or the process. "
                f"Raise timeout= if the target is merely slow."
            ) from None

    # -- the journal's binding to this target ------------------------------------------------
    def _bind_journal(self) -> None:
        """Check (or, for a new journal, record) what the journal belongs to. Costs its probes."""
        journal, d = self.journal, self.d
        assert journal is not None and d is not None  # called from _answer, after _validate set d
        stored = journal.binding()
        if stored is None:
            answers = self._probe(self.journal_probes)
            journal.bind(binding_record(d, self.journal_id, self.noise, answers))
        else:
            check_identity(stored, journal.path, d, self.journal_id, self.noise)
            expected, tokens = stored_probes(stored, journal.path)
            if expected.size:
                check_probes(journal.path, expected, self._probe(expected.size, tokens))
        self._bound = True

    def _probe(self, count: int, tokens: int | None = None) -> np.ndarray:
        """The exact (noise-free) answers to the fixed probe queries: paid, not counted as queries."""
        if count == 0:
            return np.empty(0)
        if self.budget is not None and self._paid + count > self.budget:
            raise BudgetExhausted(self._paid, self.budget, count)
        assert self.d is not None  # only _bind_journal probes, once d is known
        X = probe_queries(count, self.d) if tokens is None else probe_queries(count, self.d, tokens)
        y = self._send(X)
        if not np.all(np.isfinite(y)):
            raise OracleError(
                f"the target answered {y} to the journal's probe queries; answers must be finite. "
                f"Check the target's numerics."
            )
        return y

    # -- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the journal (and release its lock)."""
        if self.journal is not None:
            self.journal.close()

    def __enter__(self) -> Oracle:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
