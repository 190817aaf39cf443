"""Run the registered claims and write the report: the engine behind `attnlab reproduce`.

The run is incremental: each finished claim is cached (see report/cache.py) and the report is
rewritten after every claim, so a killed run leaves a readable partial report and a re-run of
the same command picks up where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from attnlab.report.cache import ClaimCache, claim_key
from attnlab.report.claims import CLAIMS, ClaimResult, Context
from attnlab.report.html import write_report


class ReproduceInterrupted(KeyboardInterrupt):
    """Raised when a run stops early; the claims done so far are cached and in the report."""

    def __init__(self, done: list[ClaimResult], pending: list[str], report: Path):
        super().__init__(f"{len(done)} claims done, {len(pending)} pending")
        self.done, self.pending, self.report = done, pending, report


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


def default_cache_dir(out_dir: str | Path) -> Path:
    return Path(out_dir) / ".cache"


def reproduce(
    out_dir: str | Path,
    quick: bool = False,
    only: Iterable[str] | None = None,
    skip: Iterable[str] = (),
    seed: int = 0,
    workers: int = 1,
    on_claim: Callable[[str, ClaimResult | None], None] | None = None,
    command: str = "attnlab reproduce",
    cache_dir: str | Path | None = None,
    fresh: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[list[ClaimResult], Path]:
    """Check the selected claims in order and write the report after each one.

    `on_claim(key, None)` is called before and `(key, result)` after each claim; `progress(done,
    total, label)` inside long ones. Finished claims are read from the cache (default
    `<out_dir>/.cache`) unless `fresh`; `fresh` recomputes every claim and overwrites its entry.
    On KeyboardInterrupt the report is written for the claims done and ReproduceInterrupted
    is raised."""
    out = Path(out_dir)
    ctx = Context(quick=quick, out_dir=out, seed=seed, workers=workers, progress=progress)
    cache = ClaimCache(default_cache_dir(out) if cache_dir is None else cache_dir)
    settings = {"quick": quick, "seed": seed}
    keys = select(only, skip)
    results: list[ClaimResult] = []
    try:
        path = write_report(results, out, quick, command, pending=keys)
        for i, key in enumerate(keys):
            claim = CLAIMS[key]
            if on_claim:
                on_claim(key, None)
            entry_key = claim_key(claim, settings)
            result = None if fresh else cache.load(claim, entry_key, out / "figures")
            if result is None:
                result = claim.run(ctx)
                cache.store(claim, entry_key, result, out / "figures", settings)
            results.append(result)
            path = write_report(results, out, quick, command, pending=keys[i + 1 :])
            if on_claim:
                on_claim(key, result)
    except KeyboardInterrupt:
        pending = keys[len(results) :]
        path = write_report(results, out, quick, command, pending=pending)
        raise ReproduceInterrupted(results, pending, path) from None
    return results, path
