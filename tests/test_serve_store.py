"""Keys, budgets and idempotency records of `attnlab serve` (SQLite), without HTTP."""

from __future__ import annotations

import sqlite3
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.serve import KeyStore, KeyStoreError
from attnlab.serve.store import Outcome


@pytest.fixture
def store(tmp_path):
    with KeyStore(tmp_path / "keys.sqlite") as s:
        yield s


def test_keys_are_stored_only_as_hashes(store, tmp_path):
    secret = store.add_key("alice", 10)
    assert secret.startswith("ak_") and len(secret) > 40
    assert store.authenticate(secret).name == "alice"
    assert store.authenticate(secret + "x") is None
    dump = "\n".join(sqlite3.connect(tmp_path / "keys.sqlite").iterdump())
    assert secret not in dump and secret[8:20] not in dump


def test_key_management_errors_say_what_to_do(store):
    store.add_key("alice", 10)
    with pytest.raises(KeyStoreError, match="exists already"):
        store.add_key("alice", 5)
    with pytest.raises(KeyStoreError, match="no key named 'bob'.*attnlab keys add bob"):
        store.set_budget("bob", 3)
    with pytest.raises(KeyStoreError, match="non-negative whole number"):
        store.add_key("carol", -1)
    with pytest.raises(KeyStoreError, match="non-empty name"):
        store.add_key(" ", 1)


def test_charges_are_refused_whole_when_the_budget_cannot_pay(store):
    store.add_key("alice", 10)
    key = store.get("alice")
    assert store.reserve(key.id, 7).outcome is Outcome.CHARGED
    refused = store.reserve(key.id, 4)
    assert refused.outcome is Outcome.EXHAUSTED and (refused.spent, refused.budget_left) == (7, 3)
    assert store.reserve(key.id, 3).outcome is Outcome.CHARGED
    assert store.get("alice").spent == 10
    store.set_budget("alice", 12)
    assert store.get("alice").budget_left == 2


def test_idempotent_requests_are_charged_once(store):
    store.add_key("alice", 10)
    key_id = store.get("alice").id
    assert store.reserve(key_id, 3, "r1", b"body").outcome is Outcome.CHARGED
    assert store.reserve(key_id, 3, "r1", b"body").outcome is Outcome.IN_FLIGHT
    assert store.reserve(key_id, 3, "r1", b"other").outcome is Outcome.MISMATCH
    store.complete(key_id, "r1", '{"outputs": [1, 2, 3]}')
    replay = store.reserve(key_id, 3, "r1", b"body")
    assert replay.outcome is Outcome.REPLAY and replay.response == '{"outputs": [1, 2, 3]}'
    assert store.get("alice").spent == 3
    # The same idempotency key under another API key is another request.
    store.add_key("bob", 5)
    assert store.reserve(store.get("bob").id, 3, "r1", b"body").outcome is Outcome.CHARGED


def test_an_abandoned_request_is_taken_over_without_a_second_charge(store):
    store.add_key("alice", 10)
    key_id = store.get("alice").id
    store.reserve(key_id, 4, "r1", b"body")
    assert store.reserve(key_id, 4, "r1", b"body", stale_after_s=0.0).outcome is Outcome.TAKEN_OVER
    assert store.get("alice").spent == 4


def test_release_refunds_and_forgets_the_request(store):
    store.add_key("alice", 10)
    key_id = store.get("alice").id
    store.reserve(key_id, 4, "r1", b"body")
    store.release(key_id, "r1", 4)
    assert store.get("alice").spent == 0
    assert store.reserve(key_id, 4, "r1", b"body").outcome is Outcome.CHARGED


def test_budgets_and_records_survive_reopening(tmp_path):
    with KeyStore(tmp_path / "k.sqlite") as store:
        secret = store.add_key("alice", 10)
        key_id = store.authenticate(secret).id
        store.reserve(key_id, 6, "r1", b"body")
        store.complete(key_id, "r1", "{}")
    with KeyStore(tmp_path / "k.sqlite") as store:
        assert store.authenticate(secret).spent == 6
        assert store.reserve(key_id, 6, "r1", b"body").outcome is Outcome.REPLAY
        assert store.purge(older_than_s=-1.0) == 1
        assert store.reserve(key_id, 6, "r1", b"body").outcome is Outcome.EXHAUSTED


@settings(max_examples=40, deadline=None)
@given(budget=st.integers(0, 50), sizes=st.lists(st.integers(1, 12), max_size=30))
def test_spent_is_exactly_what_was_granted_and_never_exceeds_the_budget(
    tmp_path_factory, budget, sizes
):
    with KeyStore(tmp_path_factory.mktemp("prop") / "k.sqlite") as store:
        store.add_key("k", budget)
        key_id = store.get("k").id
        granted = 0
        for n in sizes:
            outcome = store.reserve(key_id, n).outcome
            assert outcome is (Outcome.CHARGED if granted + n <= budget else Outcome.EXHAUSTED)
            granted += n if outcome is Outcome.CHARGED else 0
        assert store.get("k").spent == granted <= budget


def test_concurrent_connections_never_overspend(tmp_path):
    """Threads with their own connections (as separate server processes would have) race for one key."""
    path = tmp_path / "k.sqlite"
    with KeyStore(path) as admin:
        admin.add_key("k", 500)
        key_id = admin.get("k").id
    granted = [0] * 8

    def spend(i):
        with KeyStore(path) as store:
            n = 1 + i % 3
            while store.reserve(key_id, n).outcome is Outcome.CHARGED:
                granted[i] += n
            # Whatever is left is smaller than n; take it one query at a time.
            while store.reserve(key_id, 1).outcome is Outcome.CHARGED:
                granted[i] += 1

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with KeyStore(path) as store:
        assert sum(granted) == store.get("k").spent == 500
