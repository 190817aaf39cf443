"""What an extractor returns, and how its fidelity is measured on fresh queries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnlab.extract.convention import token_width
from attnlab.oracle import Oracle
from attnlab.oracle.sampling import apply_by_length, random_sequences

Surrogate = Callable[[np.ndarray], np.ndarray]


@dataclass
class Extraction:
    """Recovered parameters plus the evidence: queries spent (read from the oracle) and fidelity.

    `params` maps names ("W", "v", "u", "c", ...) to arrays; they are also attributes
    (`extraction.W`). `stages` splits the query count by stage where an extractor has several.
    `fidelity` is the largest absolute difference between the surrogate and the oracle on
    `fidelity_queries` fresh random queries, which are not part of `queries`.
    """

    params: dict[str, np.ndarray]
    queries: int
    method: str
    dof: int | None = None
    seconds: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)
    fidelity: float | None = None
    fidelity_queries: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    surrogate: Surrogate | None = field(default=None, repr=False, compare=False)

    def __getattr__(self, name: str):
        params = self.__dict__.get("params", {})
        if name in params:
            return params[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or parameter {name!r}")

    def predict(self, X) -> np.ndarray:
        """The recovered model's output on a batch (B, N, d)."""
        if self.surrogate is None:
            raise AttributeError("this extraction carries no surrogate model")
        return self.surrogate(np.asarray(X, dtype=np.float64))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays become nested lists)."""
        return {
            "method": self.method,
            "queries": self.queries,
            "dof": self.dof,
            "seconds": self.seconds,
            "stages": dict(self.stages),
            "fidelity": self.fidelity,
            "fidelity_queries": self.fidelity_queries,
            "info": _jsonable(self.info),
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
        }


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def measure_fidelity(oracle: Oracle, surrogate: Surrogate, n: int = 1000, lengths=(1, 32),
                     seed: int = 12345, scale: float = 1.0) -> tuple[float, int]:
    """Largest |surrogate - oracle| over n fresh random sequences; returns (error, queries it cost)."""
    rng = np.random.default_rng(seed)
    seqs = random_sequences(rng, token_width(oracle), n, lengths, scale)
    before = oracle.queries
    answers = oracle.query_many(seqs)
    spent = oracle.queries - before
    predicted = apply_by_length(surrogate, seqs)
    return float(np.max(np.abs(predicted - answers))), spent
