"""What every construction's `verify` returns, and the search for the smallest passing size.

A construction is verified, not assumed: it runs on inputs the task samples AND on inputs chosen
against it (adversarial), both scored with the task's own `score`. For qSA it passes when the
worst error is at most eps; for the Match tasks when no bit is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnlab.errors import AttnlabError


class ConstructionFailed(AttnlabError):
    """No size (or precision) within the searched range made the construction pass."""


@dataclass
class Verification:
    """Scores of one construction on sampled and on adversarial inputs (task.score dicts)."""

    task: str
    params: dict[str, Any]
    threshold: float
    random: dict[str, float]
    adversarial: dict[str, float]
    n_random: int
    n_adversarial: int
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def max_error(self) -> float:
        return max(self.random["max_error"], self.adversarial.get("max_error", 0.0))

    @property
    def bit_errors(self) -> int | None:
        if "bit_errors" not in self.random:
            return None
        return int(self.random["bit_errors"] + self.adversarial.get("bit_errors", 0.0))

    @property
    def passed(self) -> bool:
        if self.bit_errors is not None:
            return self.bit_errors == 0
        return self.max_error <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "params": dict(self.params),
            "threshold": self.threshold,
            "max_error": self.max_error,
            "bit_errors": self.bit_errors,
            "passed": self.passed,
            "random": dict(self.random),
            "adversarial": dict(self.adversarial),
            "n_random": self.n_random,
            "n_adversarial": self.n_adversarial,
            "notes": dict(self.notes),
        }


def matching_task(given, own):
    """`given` if it is the task the construction was built for (None: `own`), else a ValueError."""
    if given is None:
        return own
    if given.name != own.name or given.params != own.params:
        raise ValueError(
            f"this construction is for {own.name} {own.params}, not {given.name} {given.params}; "
            "build one for that task"
        )
    return given


def merge_scores(scores: list[dict[str, float]], sizes: list[int]) -> dict[str, float]:
    """Several task.score dicts as one: worst cases take the max, counts add, means are weighted."""
    if not scores:
        return {}
    merged: dict[str, float] = {}
    total = float(sum(sizes))
    for key in scores[0]:
        values = [s[key] for s in scores]
        if key.startswith("max"):
            merged[key] = max(values)
        elif key == "bit_errors":
            merged[key] = float(sum(values))
        else:
            merged[key] = float(sum(v * n for v, n in zip(values, sizes)) / total)
    return merged


def smallest_passing(
    error_at: Callable[[int], float],
    tolerance: float,
    start: int,
    limit: int,
    what: str = "size",
    resolution: float = 0.0,
) -> tuple[int, dict[int, float]]:
    """The smallest integer k in [start, limit] found with error_at(k) <= tolerance.

    Doubles k from `start` until it passes, then bisects between the last failure and the first
    pass. Every evaluation is kept in the returned history {k: error}; when error_at is not
    monotone (random constructions), the answer is a k that passes whose bisection neighbour
    below failed. With `resolution` r > 0 the bisection stops once the failing k is within
    r * k of the passing one (fewer evaluations; the answer is then at most ~r above the exact
    threshold). Raises ConstructionFailed when even `limit` fails.
    """
    if start < 1 or limit < start:
        raise ValueError(f"need 1 <= start <= limit, got start={start}, limit={limit}")
    history: dict[int, float] = {}

    def passes(k: int) -> bool:
        if k not in history:
            history[k] = float(error_at(k))
        return history[k] <= tolerance

    failed, k = start - 1, start
    while not passes(k):
        if k >= limit:
            raise ConstructionFailed(
                f"no {what} up to {limit} reached error {tolerance:g} (error at {limit}: {history[k]:.3g}); "
                f"raise the limit, or relax eps / give more precision"
            )
        failed, k = k, min(2 * k, limit)
    while k - failed > max(1.0, resolution * k):
        mid = (k + failed) // 2
        failed, k = (failed, mid) if passes(mid) else (mid, k)
    return k, history


def sorted_sets(sets: np.ndarray) -> np.ndarray:
    """Index sets as the tasks store them: int64, sorted along the last axis."""
    return np.sort(np.asarray(sets, dtype=np.int64), axis=-1)
