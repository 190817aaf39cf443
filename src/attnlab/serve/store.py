"""API keys, their query budgets and the idempotency records of `attnlab serve`, in one SQLite file.

Keys are stored as SHA-256 digests: they are 256-bit random tokens, so a fast hash is enough (slow
password hashes protect guessable secrets). Every charge is one `BEGIN IMMEDIATE` transaction whose
conditional UPDATE (`spent + n <= budget`) cannot overspend, whether the concurrent requests come
from threads of one server or from several server processes sharing the file.

Idempotency: a request that carries an Idempotency-Key is recorded as `pending`, with the server
that took it, in the same transaction that charges it, then as `done` with its response (before
the response is sent). A retry with the same key and the same body gets the recorded response
back and is not charged again. A pending record whose server died (kill -9 included: see
attnlab.serve.liveness) is refunded when a server starts, or taken over by a retry that arrives
first, which then gets its answers recomputed (the model is deterministic) at no second charge.
"""

from __future__ import annotations

import hashlib
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from attnlab.errors import AttnlabError, database_file
from attnlab.serve.liveness import ServerInstance

KEY_PREFIX = "ak_"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    key_hash BLOB NOT NULL UNIQUE,
    hint TEXT NOT NULL,
    budget INTEGER NOT NULL CHECK (budget >= 0),
    spent INTEGER NOT NULL DEFAULT 0 CHECK (spent >= 0),
    revoked INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now'))
);
CREATE TABLE IF NOT EXISTS requests (
    key_id INTEGER NOT NULL REFERENCES api_keys(id),
    idempotency_key TEXT NOT NULL,
    fingerprint BLOB NOT NULL,
    queries INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    response TEXT,
    updated REAL NOT NULL,
    owner TEXT,
    PRIMARY KEY (key_id, idempotency_key)
);
"""


class KeyStoreError(AttnlabError, ValueError):
    """A key-management request that cannot be carried out (unknown name, duplicate, bad budget)."""


def hash_key(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


@dataclass(frozen=True)
class ApiKey:
    id: int
    name: str
    hint: str
    budget: int
    spent: int
    revoked: bool

    @property
    def budget_left(self) -> int:
        return max(self.budget - self.spent, 0)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "key_starts": self.hint,
            "budget": self.budget,
            "spent": self.spent,
            "budget_left": self.budget_left,
            "revoked": self.revoked,
        }


class Outcome(Enum):
    CHARGED = "charged"  # newly charged; compute and then `complete`
    TAKEN_OVER = "taken_over"  # an abandoned pending request, already paid; compute and `complete`
    REPLAY = "replay"  # answered before: send `response` again, nothing charged
    IN_FLIGHT = "in_flight"  # the same request is being computed right now
    MISMATCH = "mismatch"  # the idempotency key was used before with a different body
    EXHAUSTED = "exhausted"  # not enough budget left; nothing charged


@dataclass(frozen=True)
class Reservation:
    outcome: Outcome
    budget: int = 0
    spent: int = 0
    response: str | None = None

    @property
    def budget_left(self) -> int:
        return max(self.budget - self.spent, 0)


class KeyStore:
    """Keys, budgets and idempotency records in the SQLite file at `path` (created if missing)."""

    def __init__(self, path: str | Path):
        self.path = database_file(path, KeyStoreError, "keys database (--keys-db)", "keys.sqlite")
        self._lock = threading.Lock()
        self.instance: ServerInstance | None = None
        try:
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(requests)")}
            if "owner" not in columns:  # a database written before owners were recorded
                self._db.execute("ALTER TABLE requests ADD COLUMN owner TEXT")
            if not {"id", "name", "key_hash", "budget", "spent"} <= {
                row[1] for row in self._db.execute("PRAGMA table_info(api_keys)")
            }:
                raise sqlite3.DatabaseError("api_keys has another schema")
        except sqlite3.DatabaseError as exc:
            raise KeyStoreError(
                f"{str(self.path)!r} is not an attnlab keys database ({exc}); point --keys-db "
                f"at the file `attnlab keys add` created, or at a new path"
            ) from None

    def register_server(self) -> ServerInstance:
        """Mark this process as a live server of this database (idempotency records name it)."""
        if self.instance is None:
            self.instance = ServerInstance(self.path)
        return self.instance

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        # IMMEDIATE takes the write lock at BEGIN, so read-check-write cannot interleave across processes.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- key management -------------------------------------------------------------------
    def add_key(self, name: str, budget: int) -> str:
        """Create a key; returns the secret, which is shown this once and stored only as a hash."""
        _check_budget(budget)
        if not name or not name.strip():
            raise KeyStoreError(
                "a key needs a non-empty name, e.g. `attnlab keys add alice --budget 1000`"
            )
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._transaction() as db:
            if db.execute("SELECT 1 FROM api_keys WHERE name = ?", (name,)).fetchone():
                raise KeyStoreError(
                    f"a key named {name!r} exists already; pick another name or change its "
                    f"budget with `attnlab keys budget {name} N`"
                )
            db.execute(
                "INSERT INTO api_keys (name, key_hash, hint, budget) VALUES (?, ?, ?, ?)",
                (name, hash_key(secret), secret[: len(KEY_PREFIX) + 4], int(budget)),
            )
        return secret

    def keys(self) -> list[ApiKey]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, name, hint, budget, spent, revoked FROM api_keys ORDER BY id"
            ).fetchall()
        return [_api_key(r) for r in rows]

    def get(self, name: str) -> ApiKey:
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, hint, budget, spent, revoked FROM api_keys WHERE name = ?",
                (name,),
            ).fetchone()
        if row is None:
            known = ", ".join(k.name for k in self.keys()) or "none yet"
            raise KeyStoreError(
                f"no key named {name!r} (keys: {known}); create it with `attnlab keys add {name}`"
            )
        return _api_key(row)

    def set_budget(self, name: str, budget: int) -> ApiKey:
        """Set a key's total budget (queries already spent still count against it)."""
        _check_budget(budget)
        self.get(name)
        with self._transaction() as db:
            db.execute("UPDATE api_keys SET budget = ? WHERE name = ?", (int(budget), name))
        return self.get(name)

    def revoke(self, name: str) -> ApiKey:
        self.get(name)
        with self._transaction() as db:
            db.execute("UPDATE api_keys SET revoked = 1 WHERE name = ?", (name,))
        return self.get(name)

    def authenticate(self, secret: str) -> ApiKey | None:
        """The key whose secret this is, or None (revoked keys are returned; the caller refuses them)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, name, hint, budget, spent, revoked FROM api_keys WHERE key_hash = ?",
                (hash_key(secret),),
            ).fetchone()
        return None if row is None else _api_key(row)

    # -- charging ---------------------------------------------------------------------------
    def reserve(
        self,
        key_id: int,
        queries: int,
        idempotency_key: str | None = None,
        fingerprint: bytes = b"",
        stale_after_s: float = 120.0,
    ) -> Reservation:
        """Charge `queries` to the key unless this request was seen before; one transaction."""
        now = time.time()
        with self._transaction() as db:
            if idempotency_key is not None:
                row = db.execute(
                    "SELECT fingerprint, state, response, updated, owner FROM requests "
                    "WHERE key_id = ? AND idempotency_key = ?",
                    (key_id, idempotency_key),
                ).fetchone()
                if row is not None:
                    seen_fingerprint, state, response, updated, owner = row
                    budget, spent = self._budget_row(db, key_id)
                    if bytes(seen_fingerprint) != fingerprint:
                        return Reservation(Outcome.MISMATCH, budget, spent)
                    if state == "done":
                        return Reservation(Outcome.REPLAY, budget, spent, response)
                    owner_alive = self.instance.is_alive(owner) if self.instance else True
                    if owner_alive and now - updated < stale_after_s:
                        return Reservation(Outcome.IN_FLIGHT, budget, spent)
                    # The server that took this request died (or hung) before answering; it was paid for.
                    db.execute(
                        "UPDATE requests SET updated = ?, owner = ? WHERE key_id = ? AND idempotency_key = ?",
                        (now, self._owner, key_id, idempotency_key),
                    )
                    return Reservation(Outcome.TAKEN_OVER, budget, spent)
            charged = db.execute(
                "UPDATE api_keys SET spent = spent + ? WHERE id = ? AND spent + ? <= budget",
                (queries, key_id, queries),
            ).rowcount
            budget, spent = self._budget_row(db, key_id)
            if not charged:
                return Reservation(Outcome.EXHAUSTED, budget, spent)
            if idempotency_key is not None:
                db.execute(
                    "INSERT INTO requests (key_id, idempotency_key, fingerprint, queries, state, updated, "
                    "owner) VALUES (?, ?, ?, ?, 'pending', ?, ?)",
                    (key_id, idempotency_key, fingerprint, queries, now, self._owner),
                )
            return Reservation(Outcome.CHARGED, budget, spent)

    def complete(self, key_id: int, idempotency_key: str | None, response: str) -> None:
        """Record the response of a reserved request, so that retries replay it."""
        if idempotency_key is None:
            return
        with self._transaction() as db:
            db.execute(
                "UPDATE requests SET state = 'done', response = ?, updated = ? "
                "WHERE key_id = ? AND idempotency_key = ?",
                (response, time.time(), key_id, idempotency_key),
            )

    def release(self, key_id: int, idempotency_key: str | None, queries: int) -> None:
        """Refund a reserved request that could not be answered, and forget its record."""
        with self._transaction() as db:
            db.execute(
                "UPDATE api_keys SET spent = MAX(spent - ?, 0) WHERE id = ?", (queries, key_id)
            )
            if idempotency_key is not None:
                db.execute(
                    "DELETE FROM requests WHERE key_id = ? AND idempotency_key = ?",
                    (key_id, idempotency_key),
                )

    def has_record(self, key_id: int, idempotency_key: str | None) -> bool:
        """Whether a request with this Idempotency-Key was seen (a retry: its budget check differs)."""
        if idempotency_key is None:
            return False
        with self._lock:
            return (
                self._db.execute(
                    "SELECT 1 FROM requests WHERE key_id = ? AND idempotency_key = ?",
                    (key_id, idempotency_key),
                ).fetchone()
                is not None
            )

    def refund_abandoned(self) -> int:
        """Refund and forget pending requests whose server died before answering; returns how many.

        Their answers were never sent (a response is recorded before it is sent), so nothing a
        client received goes unpaid; a retry of one is charged afresh, once.
        """
        if self.instance is None:
            return 0
        refunded = 0
        with self._transaction() as db:
            rows = db.execute(
                "SELECT key_id, idempotency_key, queries, owner FROM requests "
                "WHERE state = 'pending'"
            ).fetchall()
            for key_id, idempotency_key, queries, owner in rows:
                if not self.instance.is_alive(owner):
                    db.execute(
                        "UPDATE api_keys SET spent = MAX(spent - ?, 0) WHERE id = ?",
                        (queries, key_id),
                    )
                    db.execute(
                        "DELETE FROM requests WHERE key_id = ? AND idempotency_key = ?",
                        (key_id, idempotency_key),
                    )
                    refunded += queries
        return refunded

    @property
    def _owner(self) -> str | None:
        return self.instance.id if self.instance is not None else None

    def purge(self, older_than_s: float) -> int:
        """Forget answered requests older than this (retries after that are charged as new)."""
        with self._transaction() as db:
            return db.execute(
                "DELETE FROM requests WHERE state = 'done' AND updated < ?",
                (time.time() - older_than_s,),
            ).rowcount

    @staticmethod
    def _budget_row(db: sqlite3.Connection, key_id: int) -> tuple[int, int]:
        return db.execute("SELECT budget, spent FROM api_keys WHERE id = ?", (key_id,)).fetchone()

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if self.instance is not None:
                self.instance.close()
                self.instance = None

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _api_key(row) -> ApiKey:
    key_id, name, hint, budget, spent, revoked = row
    return ApiKey(key_id, name, hint, budget, spent, bool(revoked))


MAX_BUDGET = 2**62  # SQLite integers are 64-bit; spent + n must not overflow either


def _check_budget(budget) -> None:
    if (
        isinstance(budget, bool)
        or not isinstance(budget, (int, float))
        or int(budget) != budget
        or budget < 0
    ):
        raise KeyStoreError(f"a budget is a non-negative whole number of queries, got {budget!r}")
    if budget > MAX_BUDGET:
        raise KeyStoreError(
            f"a budget of {budget} queries is beyond what the keys database stores; "
            f"use at most {MAX_BUDGET} (2**62)"
        )
