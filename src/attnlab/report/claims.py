"""The registry of claims `attnlab reproduce` checks, and what a checked claim looks like.

A claim pairs a statement from one of the papers with a function that measures it at a default
size (or a quick one) and says whether the measurement reproduces the statement.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PARTLY = "partly"


@dataclass
class Context:
    """What a claim's check may use: the size switch, a seed, and a folder for its figures."""

    quick: bool
    out_dir: Path
    seed: int = 0
    workers: int = 1

    def figure_path(self, name: str) -> Path:
        path = self.out_dir / "figures" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path


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
        return result


CLAIMS: dict[str, Claim] = {}


def claim(key: str, part: str, title: str, paper: str):
    """Register a check function as the claim `key`."""

    def register(fn: Callable[[Context], Measurement]) -> Callable[[Context], Measurement]:
        if key in CLAIMS:
            raise ValueError(f"claim {key!r} is registered twice")
        CLAIMS[key] = Claim(key, part, title, paper, fn)
        return fn

    return register
