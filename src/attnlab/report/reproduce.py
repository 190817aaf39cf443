"""Run the registered claims and write the report: the engine behind `attnlab reproduce`."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from attnlab.report.claims import CLAIMS, ClaimResult, Context
from attnlab.report.html import write_report


def load_claims() -> None:
    """Import the modules that register claims (kept lazy so `attnlab --help` stays fast)."""
    from attnlab.report import part_a, part_b, training  # noqa: F401


def select(only: Iterable[str] | None = None, skip: Iterable[str] = ()) -> list[str]:
    load_claims()
    keys = list(CLAIMS)
    if only:
        unknown = sorted(set(only) - set(keys))
        if unknown:
            raise ValueError(f"unknown claim(s) {unknown}; known claims: {', '.join(keys)}")
        keys = [k for k in keys if k in set(only)]
    return [k for k in keys if k not in set(skip)]


def reproduce(
    out_dir: str | Path,
    quick: bool = False,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    seed: int = 0,
    workers: int = 1,
    on_claim: Callable[[str, ClaimResult | None], None] | None = None,
    command: str = "attnlab reproduce",
) -> tuple[list[ClaimResult], Path]:
    """Check the selected claims in order; `on_claim(key, None)` before and `(key, result)` after each."""
    out = Path(out_dir)
    ctx = Context(quick=quick, out_dir=out, seed=seed, workers=workers)
    results = []
    for key in select(only, skip):
        if on_claim:
            on_claim(key, None)
        result = CLAIMS[key].run(ctx)
        results.append(result)
        if on_claim:
            on_claim(key, result)
    return results, write_report(results, out, quick, command)
