"""A query journal: every (query, answer) pair an oracle paid for, in a SQLite file.

Answers are committed as they arrive, so a process killed mid-extraction loses nothing it was
answered, and an extraction re-run against the same journal pays for no query twice.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np


def query_key(X: np.ndarray) -> bytes:
    """A digest of one query's exact float64 bytes and shape."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    h = hashlib.blake2b(digest_size=20)
    h.update(np.asarray(X.shape, dtype=np.int64).tobytes())
    h.update(X.tobytes())
    return h.digest()


class QueryJournal:
    """Maps the exact bytes of a query to the answer the target gave for it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers ("
            " key BLOB PRIMARY KEY, n INTEGER NOT NULL, d INTEGER NOT NULL,"
            " query BLOB NOT NULL, answer REAL NOT NULL,"
            " created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now')))"
        )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def lookup(self, keys: list[bytes]) -> dict[bytes, float]:
        found: dict[bytes, float] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start:start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._db.execute(f"SELECT key, answer FROM answers WHERE key IN ({marks})", chunk)
                found.update((bytes(k), a) for k, a in rows)
        return found

    def record(self, keys: list[bytes], queries: np.ndarray, answers: np.ndarray) -> None:
        """Store answered queries in one transaction (committed before returning)."""
        rows = [
            (k, int(q.shape[0]), int(q.shape[1]), np.ascontiguousarray(q, dtype=np.float64).tobytes(), float(a))
            for k, q, a in zip(keys, queries, answers)
        ]
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO answers (key, n, d, query, answer) VALUES (?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")

    def entries(self):
        """Yield (query, answer) pairs in the order they were recorded."""
        with self._lock:
            rows = self._db.execute("SELECT n, d, query, answer FROM answers ORDER BY rowid").fetchall()
        for n, d, blob, answer in rows:
            yield np.frombuffer(blob, dtype=np.float64).reshape(n, d), answer

    def close(self) -> None:
        with self._lock:
            self._db.close()
