"""The registry of claims `attnlab reproduce` checks, and what a checked claim looks like.

A claim pairs a statement from one of the papers with a function that measures it at a default
size (or a quick one) and says whether the measurement reproduces the statement.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PARTLY = "partly"


@dataclass
class Context:
    """What a claim's check may use: the size switch, a seed, and a folder for its figures."""

    quick: bool
    out_dir: Path
    seed: int = 0
    workers: int = 1
    # called as progress(done, total, label) inside a long check; None: no progress shown
    progress: Callable[[int, int, str], None] | None = None

    def figure_path(self, name: str) -> Path:
        path = self.out_dir / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def track(
        self, items: Iterable[T], label: Callable[[T], str] = str, total: int | None = None
    ) -> Iterator[T]:
        """Yield `items`, reporting `label(item)` and the count done to `progress` before each."""
        seq: Sequence[T] = items if isinstance(items, Sequence) else list(items)
        n = len(seq) if total is None else total
        for i, item in enumerate(seq):
            if self.progress:
                self.progress(i, n, label(item))
            yield item
        if self.progress:
            self.progress(n, n, "done")


@dataclass
class ClaimResult:
    key: str
    part: str
    title: str
    paper: str
    measured: str = ""
    reproduced: bool | str | None = None  # PARTLY: some parts of the claim hold, others do not
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None
    finished_at: str | None = None  # UTC time the check finished (kept when read from the cache)
    cached: bool = False  # True when this run read the result from the cache

    @property
    def status(self) -> str:
        if self.error is not None:
            return "error"
        return {
            True: "reproduced",
            False: "not reproduced",
            None: "not checked",
            PARTLY: "partly reproduced",
        }[self.reproduced]

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["status"] = self.status
        return out


@dataclass
class Measurement:
    """What a check returns; the registry adds the claim's identity and timing."""

    measured: str
    reproduced: bool | str | None  # True, False, PARTLY, or None (not checked, e.g. a smoke run)
    table: list[dict[str, Any]] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    key: str
    part: str
    title: str
    paper: str
    check: Callable[[Context], Measurement]
    inputs: tuple[Path, ...] = ()  # data files the check reads; their content is in the cache key

    def run(self, ctx: Context) -> ClaimResult:
        result = ClaimResult(self.key, self.part, self.title, self.paper)
        start = time.perf_counter()
        try:
            m = self.check(ctx)
            verdict = m.reproduced if m.reproduced in (PARTLY, None) else bool(m.reproduced)
            result.measured, result.reproduced = m.measured, verdict
            result.table, result.figures, result.config = m.table, m.figures, m.config
        except Exception as exc:  # a failing check is a finding to report, not a crash
            result.error = f"{type(exc).__name__}: {exc}"
            result.measured = traceback.format_exc(limit=3)
        result.seconds = time.perf_counter() - start
        result.finished_at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return result


CLAIMS: dict[str, Claim] = {}


def claim(key: str, part: str, title: str, paper: str, inputs: Iterable[Path] = ()):
    """Register a check function as the claim `key` (`inputs`: data files it reads)."""

    def register(fn: Callable[[Context], Measurement]) -> Callable[[Context], Measurement]:
        if key in CLAIMS:
            raise ValueError(f"claim {key!r} is registered twice")
        CLAIMS[key] = Claim(key, part, title, paper, fn, tuple(Path(p) for p in inputs))
        return fn

    return register
