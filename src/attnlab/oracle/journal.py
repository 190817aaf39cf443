"""A query journal: every (query, answer) pair an oracle paid for, in a SQLite file.

Answers are committed chunk by chunk as they arrive, so a process killed mid-extraction loses
only the chunk that was in flight, and a re-run against the same journal replays the rest.

What the file guarantees, and how:

- *Bound to its target.* The file stores a binding (token width, an optional identity string,
  the answers to a few fixed probe queries, the noise model); the Oracle re-checks it when it
  opens the journal and raises `JournalMismatch` on any difference (see `Oracle`).
- *Checked on replay.* Every row carries a checksum of its query and answer; a replayed row whose
  checksum fails, or whose answer is not a finite real number, raises `JournalError` naming the
  file and the row. This detects edits and corruption, not a forger who recomputes checksums:
  the file is not signed.
- *One process at a time.* Opening takes an exclusive lock (a `<file>.lock` beside it, released
  by the kernel even on kill -9); a second opener gets a `JournalError` saying who holds it.
- *Clear errors.* A garbage, truncated or foreign SQLite file raises `JournalError` (which file,
  what to do), never a raw `sqlite3.DatabaseError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import sqlite3
import struct
import threading
import weakref
from pathlib import Path

import numpy as np

from attnlab.errors import JournalError, database_file
from attnlab.oracle.checks import row_hashes

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, documented in QueryJournal
    fcntl = None  # type: ignore[assignment]  # checked before every use

FORMAT = "attnlab-query-journal"
SCHEMA = 2
_ANSWER_COLUMNS = ["key", "n", "d", "query", "answer", "checksum", "created"]
_WHAT_TO_DO = "Move it away (or pass another journal= path) to start a fresh journal"


def query_key(X: np.ndarray) -> bytes:
    """A digest of one query's exact float64 bytes and shape."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    h = hashlib.blake2b(digest_size=20)
    h.update(np.asarray(X.shape, dtype=np.int64).tobytes())
    h.update(X.tobytes())
    return h.digest()


def row_checksum(key: bytes, n: int, d: int, query: bytes, answer: float) -> bytes:
    h = hashlib.blake2b(digest_size=16, person=b"attnlab-jrnl-v2")
    h.update(key)
    h.update(struct.pack("<qq", n, d))
    h.update(query)
    h.update(struct.pack("<d", answer))
    return h.digest()


# Two sequences are candidates for being identical when their float hashes (`checks.row_hashes`)
# agree to this relative precision (or to NEAR_FLOOR of the batch's largest hash). Identical
# sequences differ only by the BLAS's rounding, which depends on where a row falls in the batch:
# at most 2 w eps S for rows of w entries, S the weighted sum of |entries|, far inside the tolerance
# unless a row's weighted entries cancel S down by more than ~2**28 / w (32,768 at w = 8192).
NEAR = 2.0**-24
NEAR_FLOOR = 2.0**-36


def distinct_queries(
    batch: np.ndarray, hashes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(first, inverse) with batch[first] the byte-distinct sequences in order of first appearance
    and batch[first][inverse] equal to batch byte for byte.

    Candidates are grouped by a float hash (`checks.row_hashes`: one BLAS pass, which the caller's
    finite check has usually computed already: pass it as `hashes`); only sequences whose hashes
    agree to NEAR are compared, by their exact bytes, so two different sequences are never merged.
    A batch of distinct probes, the usual case, costs the hash and one sort of B numbers.
    """
    B = batch.shape[0]
    every = np.arange(B)
    if B < 2:
        return every, every
    if hashes is None:
        hashes = row_hashes(batch)
    if not np.all(np.isfinite(hashes)):  # huge finite entries overflowed the hash: bytes decide
        return _distinct_by_bytes(_row_bits(batch))
    order = np.argsort(hashes)
    ranked = hashes[order]
    size = np.abs(ranked)
    tolerance = NEAR * np.maximum(size[1:], size[:-1]) + NEAR_FLOOR * float(size.max())
    near = np.flatnonzero(ranked[1:] - ranked[:-1] <= tolerance)
    if near.size == 0:
        return every, every  # all distinct: no copy, no byte comparison
    candidates = np.unique(np.concatenate([order[near], order[near + 1]]))  # ascending = first seen
    bits = _row_bits(batch)
    representative = every.copy()
    seen: dict[bytes, int] = {}
    for i in candidates:
        representative[i] = seen.setdefault(bits[i].tobytes(), int(i))
    first = np.flatnonzero(representative == every)
    position = np.empty(B, dtype=np.int64)
    position[first] = np.arange(first.size)
    return first, position[representative]


def _row_bits(batch: np.ndarray) -> np.ndarray:
    B = batch.shape[0]
    return np.ascontiguousarray(batch, dtype=np.float64).reshape(B, -1).view(np.uint64)


def _distinct_by_bytes(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    seen: dict[bytes, int] = {}
    inverse = np.array([seen.setdefault(row.tobytes(), len(seen)) for row in bits], dtype=np.int64)
    return np.unique(inverse, return_index=True)[
        1
    ], inverse  # labels are in order of first appearance


class QueryJournal:
    """Maps the exact bytes of a query to the answer the target gave for it (see the module doc).

    Locking uses `fcntl.flock`; where it is missing (Windows) the journal is not locked.
    """

    def __init__(self, path: str | Path):
        self.path = database_file(path, JournalError, "the journal path", "queries.sqlite")
        self._lock = threading.Lock()
        self._lock_fd = self._acquire_file_lock()
        self._db: sqlite3.Connection | None = None
        try:
            with self._guard("open"):
                self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute("PRAGMA synchronous=NORMAL")
                self._check_or_create_schema()
        except BaseException:
            self.close()
            raise
        self._finalizer = weakref.finalize(self, _release, self._db, self._lock_fd)

    @property
    def _conn(self) -> sqlite3.Connection:
        # The connection lives from __init__ to close(); using a closed journal is a caller bug.
        assert self._db is not None, f"the journal {self.path} is closed"
        return self._db

    # -- opening -------------------------------------------------------------------------------
    def _acquire_file_lock(self) -> int | None:
        if fcntl is None:
            return None
        lock_path = self.path.with_name(self.path.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise JournalError(
                f"cannot open the journal's lock file {lock_path} ({exc.strerror}); put the "
                f"journal in a directory this process can write to"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise JournalError(
                f"the journal {self.path} is open in another Oracle ({holder}); two processes sharing one "
                f"journal would pay for the same queries twice. Wait for it to finish, or give this "
                f"run its own journal= file."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        return fd

    def _check_or_create_schema(self) -> None:
        db = self._conn
        tables = {
            name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            db.execute("BEGIN")
            db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
            db.execute(
                "CREATE TABLE answers ("
                " key BLOB PRIMARY KEY, n INTEGER NOT NULL, d INTEGER NOT NULL,"
                " query BLOB NOT NULL, answer REAL NOT NULL, checksum BLOB NOT NULL,"
                " created TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now')))"
            )
            db.executemany(
                "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("schema", str(SCHEMA))]
            )
            db.execute("COMMIT")
            return
        if tables == {"answers"}:
            raise JournalError(
                f"{self.path} is a query journal from an older attnlab (no target binding, no "
                f"checksums), so its answers cannot be trusted for this target. {_WHAT_TO_DO}."
            )
        meta = dict(db.execute("SELECT name, value FROM meta")) if "meta" in tables else {}
        if meta.get("format") != FORMAT:
            raise JournalError(
                f"{self.path} is a SQLite file but not an attnlab query journal (tables: "
                f"{', '.join(sorted(tables))}). {_WHAT_TO_DO}; do not reuse other programs' files."
            )
        if meta.get("schema") != str(SCHEMA):
            raise JournalError(
                f"{self.path} is an attnlab query journal of schema {meta.get('schema')}, and this "
                f"attnlab reads schema {SCHEMA}. {_WHAT_TO_DO}."
            )
        columns = [row[1] for row in db.execute("PRAGMA table_info(answers)")]
        if columns != _ANSWER_COLUMNS:
            raise JournalError(
                f"{self.path}: its answers table has columns {columns}, expected "
                f"{_ANSWER_COLUMNS}; the file was altered. {_WHAT_TO_DO}."
            )

    @contextlib.contextmanager
    def _guard(self, action: str):
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise JournalError(
                f"the journal {self.path} cannot be used ({action}: {exc}); it is truncated, corrupt or not "
                f"an SQLite file. {_WHAT_TO_DO}; answers it held will be paid for again."
            ) from None

    # -- the binding to a target -----------------------------------------------------------------
    def binding(self) -> dict | None:
        """What the journal was recorded for (None for a journal that has not been bound yet)."""
        with self._lock, self._guard("read the binding"):
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'binding'").fetchone()
            answered = self._conn.execute("SELECT EXISTS (SELECT 1 FROM answers)").fetchone()[0]
        if row is None:
            if answered:
                raise JournalError(
                    f"{self.path} holds answers but no record of the target they came from; "
                    f"it was altered. {_WHAT_TO_DO}."
                )
            return None
        try:
            return json.loads(row[0])
        except ValueError:
            raise JournalError(
                f"{self.path}: its target binding is not readable JSON; the file was altered. "
                f"{_WHAT_TO_DO}."
            ) from None

    def bind(self, binding: dict) -> None:
        """Record what the journal belongs to; done once, before the first answer is recorded."""
        with self._lock, self._guard("write the binding"):
            self._conn.execute("INSERT INTO meta VALUES ('binding', ?)", (json.dumps(binding),))

    # -- answers ---------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock, self._guard("count answers"):
            return self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def lookup(self, keys: list[bytes]) -> dict[bytes, float]:
        """The recorded answers among `keys`, each verified (checksum, finite real answer)."""
        found: dict[bytes, float] = {}
        with self._lock, self._guard("look up answers"):
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT rowid, key, n, d, query, answer, checksum FROM answers WHERE key IN ({marks})",
                    chunk,
                )
                for row in rows:
                    found[bytes(row[1])] = self._verified(*row)
        return found

    def _verified(self, rowid, key, n, d, query, answer, checksum) -> float:
        where = f"row {rowid} (rowid) of the journal {self.path}"
        if not isinstance(answer, float) or not isinstance(n, int) or not isinstance(d, int):
            raise JournalError(
                f"{where} holds a {type(answer).__name__} answer where a real number belongs; "
                f"the file was altered. {_WHAT_TO_DO}."
            )
        if (
            not isinstance(query, bytes)
            or not isinstance(key, bytes)
            or not isinstance(checksum, bytes)
            or row_checksum(key, n, d, query, answer) != checksum
        ):
            raise JournalError(
                f"{where} fails its checksum: its query or answer was changed after it was recorded. Do not "
                f"trust this journal: {_WHAT_TO_DO[0].lower()}{_WHAT_TO_DO[1:]}, or delete that row "
                f"(DELETE FROM answers WHERE rowid = {rowid}) to pay for that one query again."
            )
        if not math.isfinite(answer):
            raise JournalError(
                f"{where} holds the answer {answer}, which is not finite; an oracle never "
                f"records such answers, so the file was altered. {_WHAT_TO_DO}."
            )
        return answer

    def record(self, keys: list[bytes], queries: np.ndarray, answers: np.ndarray) -> None:
        """Store answered queries in one transaction (committed before returning)."""
        rows = []
        for k, q, a in zip(keys, queries, answers):
            blob = np.ascontiguousarray(q, dtype=np.float64).tobytes()
            n, d, a = int(q.shape[0]), int(q.shape[1]), float(a)
            rows.append((k, n, d, blob, a, row_checksum(k, n, d, blob, a)))
        with self._lock, self._guard("record answers"):
            self._conn.execute("BEGIN")
            self._conn.executemany(
                "INSERT OR IGNORE INTO answers (key, n, d, query, answer, checksum) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._conn.execute("COMMIT")

    def entries(self):
        """Yield (query, answer) pairs in the order they were recorded, each verified."""
        with self._lock, self._guard("read answers"):
            rows = self._conn.execute(
                "SELECT rowid, key, n, d, query, answer, checksum FROM answers ORDER BY rowid"
            ).fetchall()
        for row in rows:
            answer = self._verified(*row)
            yield np.frombuffer(row[4], dtype=np.float64).reshape(row[2], row[3]), answer

    def close(self) -> None:
        with self._lock:
            finalizer = getattr(self, "_finalizer", None)
            if finalizer is not None:
                finalizer()
            else:
                _release(self._db, self._lock_fd)
            self._db = None
            self._lock_fd = None


def _release(db, lock_fd) -> None:
    if db is not None:
        with contextlib.suppress(sqlite3.Error):
            db.close()
    if lock_fd is not None:
        with contextlib.suppress(OSError):
            os.close(lock_fd)  # releases the flock
