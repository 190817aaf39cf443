"""Results store: one SQLite file (WAL mode), one row per run, written only by the sweep's parent.

Each `put` is its own committed transaction, so a parent killed with SIGKILL loses at most the run
it was writing, never a committed one, and inserts are idempotent on the run id (a finished run
is never duplicated or overwritten; a failed or diverged one is replaced when it is retried).
Each finished run's training curve goes to the `curves` table (one row per validation pass).

This module depends on the plain-data results module only, never on the training code or torch.
"""

from __future__ import annotations

import csv
import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from attnlab.errors import AttnlabError, database_file
from attnlab.experiments.results import CURVE_FIELDS, RunResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,            -- 'ok', 'diverged' or 'failed'
    config_json TEXT NOT NULL,
    seed INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    timings_json TEXT NOT NULL,
    error TEXT,
    started_at TEXT, finished_at TEXT,
    wall_seconds REAL,
    attnlab_version TEXT, torch_version TEXT, python_version TEXT, device TEXT
);
CREATE TABLE IF NOT EXISTS curves (
    run_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    train_loss REAL, val_loss REAL, lr REAL,
    PRIMARY KEY (run_id, step)
);
CREATE TABLE IF NOT EXISTS sweep_runs (
    sweep TEXT NOT NULL,
    run_id TEXT NOT NULL,
    PRIMARY KEY (sweep, run_id)
);
"""

COLUMNS = (
    "run_id",
    "status",
    "config_json",
    "seed",
    "metrics_json",
    "timings_json",
    "error",
    "started_at",
    "finished_at",
    "wall_seconds",
    "attnlab_version",
    "torch_version",
    "python_version",
    "device",
)


class StoreError(AttnlabError, ValueError):
    """The path given as a results store is not one (a directory, or a file that is not SQLite)."""


class ResultStore:
    """A results file. Open it with a path; it is created (with its schema) if missing."""

    def __init__(self, path: str | Path):
        self.path = database_file(path, StoreError, "results store", "results.sqlite")
        try:
            self._db = sqlite3.connect(self.path, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                f"{self.path} is not an attnlab results store (SQLite said: {exc}); "
                f"give another --store path, or move that file away"
            ) from None
        present = {row[1] for row in self._db.execute("PRAGMA table_info(runs)")}
        for column in COLUMNS:
            if column not in present:  # a store written by an older attnlab: add what it lacks
                self._db.execute(f"ALTER TABLE runs ADD COLUMN {column} TEXT")
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def add_to_sweep(self, sweep: str, run_ids: list[str]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR IGNORE INTO sweep_runs VALUES (?, ?)", [(sweep, r) for r in run_ids]
            )

    def finished_ids(self) -> set[str]:
        return {row[0] for row in self._db.execute("SELECT run_id FROM runs WHERE status = 'ok'")}

    def put(self, result: RunResult) -> bool:
        """Record a finished run and its curve; False (nothing written) if already recorded as ok."""
        if result.status != "ok":
            raise ValueError(
                f"run {result.run_id} has status '{result.status}'; only finished runs are "
                f"stored (resume it with train(config, run_dir) first)"
            )
        written = self._upsert(
            result.run_id,
            "ok",
            result.config,
            result.seed,
            result.metrics,
            result.timings,
            None,
            result.started_at,
            result.finished_at,
            result.versions,
        )
        if written and result.curve:
            points = zip(*(result.curve.get(name, []) for name in CURVE_FIELDS))
            with self._db:
                self._db.execute("DELETE FROM curves WHERE run_id = ?", (result.run_id,))
                self._db.executemany(
                    "INSERT INTO curves VALUES (?, ?, ?, ?, ?)",
                    [(result.run_id, int(p[0]), *map(float, p[1:])) for p in points],
                )
        return written

    def put_failure(
        self, run_id: str, config: dict[str, Any], seed: int, error: str, status: str = "failed"
    ) -> bool:
        """Record that a run raised ('failed') or diverged ('diverged'); a later successful put
        replaces this row."""
        if status not in ("failed", "diverged"):
            raise ValueError(f"a failure is stored as 'failed' or 'diverged', not {status!r}")
        return self._upsert(run_id, status, config, seed, {}, {}, error, None, None, {})

    def curve(self, run_id: str) -> dict[str, list[float]]:
        """One run's training curve: lists step, train_loss, val_loss, lr (empty if none stored)."""
        rows = self._db.execute(
            f"SELECT {', '.join(CURVE_FIELDS)} FROM curves WHERE run_id = ? ORDER BY step",
            (run_id,),
        ).fetchall()
        return {name: [row[i] for row in rows] for i, name in enumerate(CURVE_FIELDS)}

    def curves(self, sweep: str | None = None) -> list[dict[str, Any]]:
        """Every stored curve point as a flat row (run_id, step, train_loss, val_loss, lr)."""
        query = f"SELECT c.run_id, {', '.join('c.' + n for n in CURVE_FIELDS)} FROM curves c"
        args: list[Any] = []
        if sweep is not None:
            query += " JOIN sweep_runs s ON s.run_id = c.run_id WHERE s.sweep = ?"
            args.append(sweep)
        cursor = self._db.execute(query + " ORDER BY c.run_id, c.step", args)
        return [dict(zip(("run_id", *CURVE_FIELDS), row)) for row in cursor]

    def to_pandas(self, sweep: str | None = None):
        """The finished runs as a pandas DataFrame, one flat row per run (needs pandas)."""
        try:
            import pandas as pd
        except ImportError as exc:
            raise ImportError(
                "ResultStore.to_pandas needs pandas: pip install 'attnlab[parquet]'"
            ) from exc
        return pd.DataFrame(flat_records(self.records(sweep)))

    def counts(self) -> dict[str, int]:
        """Number of runs per status."""
        return dict(
            self._db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status ORDER BY status")
        )

    def _upsert(
        self, run_id, status, config, seed, metrics, timings, error, started, finished, versions
    ) -> bool:
        row = (
            run_id,
            status,
            json.dumps(config, sort_keys=True),
            seed,
            json.dumps(metrics),
            json.dumps(timings),
            error,
            started,
            finished,
            timings.get("wall_seconds"),
            versions.get("attnlab"),
            versions.get("torch"),
            versions.get("python"),
            versions.get("device"),
        )
        with self._db:
            cursor = self._db.execute(
                f"INSERT INTO runs ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))}) "
                "ON CONFLICT(run_id) DO UPDATE SET "
                + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS[1:])
                + " WHERE runs.status != 'ok'",
                row,
            )
            return cursor.rowcount == 1

    def records(self, sweep: str | None = None, status: str | None = "ok") -> list[dict[str, Any]]:
        """Rows as dicts with `config` and `metrics` parsed, optionally one sweep's / one status's."""
        query, args = "SELECT r.* FROM runs r", []
        clauses = []
        if sweep is not None:
            query += " JOIN sweep_runs s ON s.run_id = r.run_id"
            clauses.append("s.sweep = ?")
            args.append(sweep)
        if status is not None:
            clauses.append("r.status = ?")
            args.append(status)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        query += " ORDER BY r.run_id"
        cursor = self._db.execute(query, args)
        names = [d[0] for d in cursor.description]
        out = []
        for values in cursor:
            row = dict(zip(names, values))
            row["config"] = json.loads(row["config_json"])
            row["metrics"] = json.loads(row["metrics_json"])
            row["timings"] = json.loads(row["timings_json"])
            out.append(row)
        return out

    def sweeps(self) -> dict[str, int]:
        return dict(
            self._db.execute("SELECT sweep, COUNT(*) FROM sweep_runs GROUP BY sweep ORDER BY sweep")
        )

    def count(self, status: str = "ok") -> int:
        return self._db.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (status,)).fetchone()[
            0
        ]


def _flatten(prefix: str, value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _flatten(f"{prefix}.{key}" if prefix else key, child)
    else:
        yield prefix, value


def flat_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat dict per run: run_id, status, seed, config.*, metrics.*, timings.*, versions."""
    flat = []
    for row in records:
        item = {k: row[k] for k in COLUMNS if not k.endswith("_json")}
        for section in ("config", "metrics", "timings"):
            item.update(dict(_flatten(section, row[section])))
        flat.append(item)
    return flat


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    names: dict[str, None] = {}
    for row in rows:
        names.update(dict.fromkeys(row))
    return list(names)


def export_csv(store: ResultStore, path: str | Path, sweep: str | None = None) -> int:
    """Write the store's finished runs as CSV (one row per run); returns the number of rows."""
    rows = flat_records(store.records(sweep))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def _write_parquet(rows: list[dict[str, Any]], path: str | Path) -> int:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise ImportError("Parquet export needs pyarrow: pip install 'attnlab[parquet]'") from exc
    columns = _columns(rows)
    table = (
        pa.table({name: [row.get(name) for row in rows] for name in columns})
        if rows
        else pa.table({})
    )
    pq.write_table(table, str(path))
    return len(rows)


def _only(rows: list[dict[str, Any]], only: set[str] | None) -> list[dict[str, Any]]:
    return rows if only is None else [r for r in rows if r["run_id"] in only]


def export_parquet(
    store: ResultStore, path: str | Path, sweep: str | None = None, only: set[str] | None = None
) -> int:
    """Write the store's finished runs (those in `only`, if given) as a Parquet file (needs
    pyarrow); returns the number of rows."""
    return _write_parquet(flat_records(_only(store.records(sweep), only)), path)


def export_curves_parquet(
    store: ResultStore, path: str | Path, sweep: str | None = None, only: set[str] | None = None
) -> int:
    """Write every stored training-curve point (run_id, step, train_loss, val_loss, lr) as Parquet;
    join on run_id with export_parquet's table for the configs. Returns the number of rows."""
    return _write_parquet(_only(store.curves(sweep), only), path)


def export_records(
    store: ResultStore, path: str | Path, sweep: str | None = None, only: set[str] | None = None
) -> int:
    """Write the finished runs as JSON lines (gzip-compressed when the name ends in .gz), keeping
    the nesting (config, metrics, timings) the analysis reads, plus `sweeps` (the sweeps each run
    belongs to); `load_records` reads it back."""
    import gzip

    rows = _only(store.records(sweep), only)
    membership: dict[str, list[str]] = {}
    for name, run_id in store._db.execute("SELECT sweep, run_id FROM sweep_runs ORDER BY sweep"):
        membership.setdefault(run_id, []).append(name)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wt") as handle:
        for row in rows:
            data = {k: v for k, v in row.items() if not k.endswith("_json")}
            data["sweeps"] = membership.get(row["run_id"], [])
            handle.write(json.dumps(data, sort_keys=True) + "\n")
    return len(rows)


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """The records written by `export_records`, as `ResultStore.records` returns them."""
    import gzip

    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as handle:
        return [json.loads(line) for line in handle if line.strip()]
