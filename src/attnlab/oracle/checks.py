"""The Oracle's input and output checks, as plain functions: argument values, query arrays, answers.

Kept apart from the Oracle so that every door (Oracle, DeviceOracle) applies the same rules with the
same messages.
"""

from __future__ import annotations

import math
import numbers
from typing import overload

import numpy as np

from attnlab.errors import OracleError, QueryShapeError
from attnlab.oracle.targets import real_queries

_FINITE_KEYS: dict[int, np.ndarray] = {}


def all_finite(X: np.ndarray) -> bool:
    """Whether every entry of the float64 array X is finite, in one BLAS pass for large batches.

    X @ key with a strictly positive key is non-finite whenever an entry is NaN or infinite (NaN
    and +-inf survive every product by a positive number and every sum in IEEE arithmetic, and a
    non-zero key entry is never skipped). It can also overflow on huge finite entries; only then
    are the entries checked one by one. A (B, N, d) batch costs one read pass, no temporary array.
    """
    if X.size < 4096:
        return bool(np.all(np.isfinite(X)))
    rows = X.reshape(X.shape[0] if X.ndim == 3 else 1, -1)
    width = rows.shape[1]
    key = _FINITE_KEYS.get(width)
    if key is None:
        key = _FINITE_KEYS[width] = np.random.default_rng(0x66696E).random(width) + 0.5
    if np.all(np.isfinite(rows @ key)):
        return True
    return bool(np.all(np.isfinite(X)))


def valid_query(X, d: int | None, single_only: bool = False) -> np.ndarray:
    """X as a finite float64 query of shape (N, d) (or a batch (B, N, d)), or QueryShapeError.

    d=None accepts any token width (the caller then fixes it from X).
    """
    what = "(N, d)" if single_only else "(N, d) or a batch (B, N, d)"
    X = real_queries(X, what)
    if X.ndim not in ((2,) if single_only else (2, 3)):
        raise QueryShapeError(f"a query must have shape {what}; got shape {X.shape}")
    if X.shape[-1] < 1:
        raise QueryShapeError(f"tokens must have width d >= 1; got shape {X.shape}")
    if X.shape[-2] < 1:
        raise QueryShapeError(f"a query needs at least one token (N >= 1); got shape {X.shape}")
    if d is not None and X.shape[-1] != d:
        raise QueryShapeError(f"tokens must have width d = {d}; got shape {X.shape}")
    if not all_finite(X):
        raise QueryShapeError(
            "a query contains NaN or infinite entries; queries must be finite real arrays"
        )
    return X


def one_answer_each(y: np.ndarray, X: np.ndarray, who: str) -> np.ndarray:
    """y if it holds one answer per sequence of X, else the OracleError that says so."""
    if y.shape != (X.shape[0],):
        raise OracleError(
            f"the {who} must return one number per sequence, shape ({X.shape[0]},) for a batch of "
            f"shape {X.shape}; it returned shape {y.shape}. Make it reduce to a scalar per sequence. "
            f"The {X.shape[0]} sequences sent count as paid."
        )
    return y


@overload
def whole_number(name: str, value: None, minimum: int, meaning: str) -> None: ...
@overload
def whole_number(name: str, value: int, minimum: int, meaning: str) -> int: ...
@overload
def whole_number(name: str, value: int | None, minimum: int, meaning: str) -> int | None: ...
def whole_number(name: str, value, minimum: int, meaning: str) -> int | None:
    """`value` as an int >= minimum (None passes), or a ValueError that says what was wrong."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum} ({meaning}), got {value!r}")
    return int(value)


def positive_seconds(name: str, value) -> float | None:
    """`value` as positive, finite seconds (None passes), or a ValueError that says what was wrong."""
    if value is None:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and math.isfinite(value) and value > 0):
        raise ValueError(
            f"{name} must be a positive, finite number of seconds or None, got {value!r}"
        )
    return float(value)
