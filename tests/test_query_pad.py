"""The query pad (oracle/pad.py): hashes kept through every kind of write, and the Oracle's
guarantees (finite queries, repeats paid once, every sequence counted) when it takes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import Oracle, QueryShapeError
from attnlab.models import SingleHeadAttention
from attnlab.oracle.checks import row_hashes
from attnlab.oracle.device import DeviceOracle, TimedTarget
from attnlab.oracle.pad import QueryPad


def assert_hashes_kept(pad: QueryPad, n: int) -> None:
    fresh = row_hashes(pad.X[:n])
    np.testing.assert_allclose(pad.hashes(n), fresh, rtol=1e-12, atol=1e-12 * np.abs(fresh).max())


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 40))
def test_every_write_keeps_the_hashes_of_the_entries(seed, steps):
    rng = np.random.default_rng(seed)
    chunk, d = 7, 5
    pad = QueryPad(chunk, 2, d)
    table = rng.standard_normal((3, d)) * 10.0 ** rng.integers(-3, 4)
    for _ in range(steps):
        n = int(rng.integers(1, chunk + 1))
        token = int(rng.integers(0, 2))
        slots = np.sort(rng.choice(chunk, int(rng.integers(1, chunk + 1)), replace=False))
        kind = rng.integers(0, 7)
        if kind == 0:
            pad.copy_rows(token, n, table, rng.integers(0, 3, n))
        elif kind == 1:
            pad.copy_rows_at(token, slots, table, rng.integers(0, 3, slots.size))
        elif kind == 2:
            pad.put(token, n, rng.integers(0, d, n), rng.standard_normal(n))
        elif kind == 3:
            pad.put_at(
                token, slots, rng.integers(0, d, slots.size), rng.standard_normal(slots.size)
            )
        elif kind == 4:
            pad.fill(token, n, float(rng.standard_normal()))
        elif kind == 5:
            pad.fill_at(token, slots, 0.0)
        else:
            pad.dense(token, n)[:] = rng.standard_normal((n, d))
            pad.written(token, n)
        assert_hashes_kept(pad, chunk)


def head_oracle(d=6, **options):
    """An Oracle around a real attention head, the target timed (its `calls` counted)."""
    timed = TimedTarget(SingleHeadAttention.random(d, seed=3), d=d)
    return Oracle(timed, d=d, **options), timed


def filled_pad(d, n, rng, tensor=None):
    pad = QueryPad(n, 2, d, tensor)
    pad.dense(0, n)[:] = rng.standard_normal((n, d))
    pad.dense(1, n)[:] = rng.standard_normal((n, d))
    pad.written(0, n)
    pad.written(1, n)
    return pad


def test_a_pad_batch_is_answered_and_counted_as_its_array():
    rng = np.random.default_rng(0)
    oracle, _ = head_oracle()
    pad = filled_pad(6, 9, rng)
    from_pad = oracle(pad.batch(9))
    assert oracle.queries == 9
    np.testing.assert_array_equal(from_pad, oracle(pad.X[:9].copy()))


def test_a_non_finite_entry_is_refused_before_the_target_sees_it():
    rng = np.random.default_rng(1)
    oracle, timed = head_oracle(budget=100)
    pad = filled_pad(6, 4, rng)
    for bad in (np.nan, np.inf, -np.inf):
        pad.put(1, 4, np.array([0, 3, 2, 5]), np.array([0.5, bad, 0.1, 0.2]))
        with pytest.raises(QueryShapeError, match="finite"):
            oracle(pad.batch(4))
        assert timed.calls == 0 and oracle.queries == 0
    # written over, the slot is finite again: the Oracle's own pass proves it (slow path)
    pad.put(1, 4, np.array([0, 3, 2, 5]), np.array([0.5, 0.7, 0.1, 0.2]))
    assert not np.all(np.isfinite(pad.hashes(4)))  # the hash stays non-finite until rewritten
    oracle(pad.batch(4))
    assert oracle.queries == 4
    pad.copy_rows(1, 4, pad.X[:4, 1].copy(), np.arange(4))  # hashed afresh
    assert np.all(np.isfinite(pad.hashes(4)))


@pytest.mark.parametrize("kind", ["oracle", "device"])
def test_repeated_sequences_of_a_pad_are_paid_once(kind):
    rng = np.random.default_rng(2)
    d, n = 6, 8
    if kind == "device":
        module = torch.nn.Linear(d, 1).double()

        class Last(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.inner = module

            def forward(self, X):
                return self.inner(X[:, -1, :]).reshape(-1) + X[:, 0, 0]

        tensor = torch.zeros((n, 2, d), dtype=torch.float64)
        oracle = DeviceOracle(Last(), d=d)
        pad = filled_pad(d, n, rng, tensor)
    else:
        oracle, _ = head_oracle(d)
        pad = filled_pad(d, n, rng)
    # slots 5 and 6 become copies of slot 1, entry by entry through put (hashes updated, not fresh)
    for slot in (5, 6):
        for token in (0, 1):
            pad.put_at(token, np.array([slot]), np.arange(d)[:1], pad.X[1, token, :1])
            for j in range(1, d):
                pad.put_at(token, np.array([slot]), np.array([j]), pad.X[1, token, j : j + 1])
    assert np.array_equal(pad.X[5], pad.X[1]) and np.array_equal(pad.X[6], pad.X[1])
    answers = oracle(pad.batch(n))
    assert oracle.queries == n and oracle._paid == n - 2
    assert answers[5] == answers[1] == answers[6]


def test_single_head_through_a_pad_matches_the_plain_array_path(monkeypatch):
    """The reader hands an Oracle its pad: same queries, same count, same W as when the Oracle
    hashes every batch itself."""
    from attnlab.extract import single_head
    from attnlab.extract.single_head import query_buffer

    head = SingleHeadAttention.random(24, seed=5)
    with_pad = single_head(Oracle(head, d=24), rank=None, seed=0, fidelity_samples=0)
    monkeypatch.setattr(query_buffer, "Oracle", type("NotAnOracle", (), {}))
    without = single_head(Oracle(head, d=24), rank=None, seed=0, fidelity_samples=0)
    assert with_pad.queries == without.queries == 24 * 24 + 24
    np.testing.assert_array_equal(with_pad.params["W"], without.params["W"])


def test_a_journaled_oracle_answers_a_pad_batch_from_its_journal(tmp_path):
    """Journal keys come from the batch's entries, so a pad's batch is journaled like any other."""
    rng = np.random.default_rng(6)
    pad = filled_pad(6, 5, rng)
    timed = TimedTarget(SingleHeadAttention.random(6, seed=3), d=6)
    with Oracle(timed, d=6, journal=tmp_path / "j.sqlite") as first:
        answers = first(pad.batch(5))
    calls = timed.calls
    with Oracle(timed, d=6, journal=tmp_path / "j.sqlite") as again:
        np.testing.assert_array_equal(again(pad.batch(5)), answers)
    assert timed.calls == calls + 1  # only the journal's identity probes, not the batch


@pytest.mark.parametrize("rank", [None, 6, "auto"])
def test_the_reader_s_kept_hashes_match_its_batches_at_every_call(monkeypatch, rank):
    """In a real extraction (a torch head behind a DeviceOracle, the reader's own pad), the hashes
    the Oracle takes agree with a fresh pass over each batch it is handed."""
    from attnlab.extract import single_head
    from attnlab.oracle import pad as pad_module

    seen = []
    kept_hashes = pad_module.PadBatch.hashes

    def checked(self):
        kept = kept_hashes(self)
        fresh = row_hashes(self.array)
        seen.append(float(np.max(np.abs(kept - fresh)) / np.max(np.abs(fresh))))
        return kept

    monkeypatch.setattr(pad_module.PadBatch, "hashes", checked)
    head = SingleHeadAttention.random(32, rank=None if rank is None else 6, seed=7)
    result = single_head(DeviceOracle(head, d=32), rank=rank, seed=1, fidelity_samples=0)
    assert len(seen) >= 5 and max(seen) < 1e-13
    assert np.max(np.abs(result.params["W"] - head.W.detach().numpy())) < 1e-9 * np.max(
        np.abs(head.W.detach().numpy())
    )
