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

_ROW_KEYS: dict[int, np.ndarray] = {}


def row_key(width: int) -> np.ndarray:
    """The fixed, strictly positive weights (in [0.5, 1.5)) of `row_hashes` for rows of this width."""
    key = _ROW_KEYS.get(width)
    if key is None:
        key = _ROW_KEYS[width] = np.random.default_rng(0x66696E).random(width) + 0.5
    return key


def row_hashes(X: np.ndarray) -> np.ndarray:
    """One float per sequence of X (B, N, d) (or per (N, d) query): its entries weighted by `row_key`.

    One BLAS matrix-vector pass, which serves twice: a NaN or infinite entry makes its row's hash
    non-finite (NaN and +-inf survive every product by a positive weight and every sum), so finite
    hashes prove finite queries; and identical sequences get hashes equal up to the BLAS's rounding,
    which is what `journal.distinct_queries` groups them by. A hash can also overflow on huge finite
    entries; callers then check the entries one by one (`all_finite`).
    """
    rows = X.reshape(X.shape[0] if X.ndim == 3 else 1, -1)
    return rows @ row_key(rows.shape[1])


def all_finite(X: np.ndarray, hashes: np.ndarray | None = None) -> bool:
    """Whether every entry of the float64 array X is finite, in one BLAS pass for large batches.

    `hashes`: X's `row_hashes`, when the caller has them already (then no pass at all unless one of
    them is non-finite). Only when a hash is non-finite (a bad entry, or an overflowing sum of huge
    finite ones) are the entries checked one by one. A (B, N, d) batch costs one read pass.
    """
    if hashes is None:
        if X.size < 4096:
            return bool(np.all(np.isfinite(X)))
        hashes = row_hashes(X)
    if np.all(np.isfinite(hashes)):
        return True
    return bool(np.all(np.isfinite(X)))


def far_apart(hashes: np.ndarray) -> bool:
    """Whether these `row_hashes` are all finite and no two are near enough to be candidates for
    one sequence under `journal.distinct_queries`' test (agreement to NEAR relative, or NEAR_FLOOR
    of the largest). True proves the batch finite (a NaN or infinite entry makes its hash
    non-finite) and all its sequences distinct, for one sort of the hashes: every gap between
    neighbours is compared with (NEAR + NEAR_FLOOR) times the largest |hash|, which is at least
    each pair's own tolerance there. False decides nothing: the caller runs the full checks."""
    global _NEAR
    if _NEAR is None:  # journal imports this module: its constants are read once, on first use
        from attnlab.oracle.journal import NEAR, NEAR_FLOOR

        _NEAR = NEAR + NEAR_FLOOR
    if hashes.size < 2:
        return bool(np.all(np.isfinite(hashes)))
    ranked = np.sort(hashes)
    low, high = float(ranked[0]), float(ranked[-1])  # a NaN sorts last
    if not (math.isfinite(low) and math.isfinite(high)):
        return False
    return float(np.diff(ranked).min()) > _NEAR * max(-low, high, 0.0)


_NEAR: float | None = None


def check_query_shape(shape: tuple[int, ...], d: int | None, single_only: bool = False) -> None:
    """The QueryShapeError for a query of this shape, if any (shared by Oracle and DeviceOracle).

    A query is (N, d), or (unless `single_only`) a batch (B, N, d); N >= 1, d >= 1, and d equal to
    the oracle's token width when that is known (d=None accepts any width).
    """
    what = "(N, d)" if single_only else "(N, d) or a batch (B, N, d)"
    if len(shape) not in ((2,) if single_only else (2, 3)):
        raise QueryShapeError(f"a query must have shape {what}; got shape {shape}")
    if shape[-1] < 1:
        raise QueryShapeError(f"tokens must have width d >= 1; got shape {shape}")
    if shape[-2] < 1:
        raise QueryShapeError(f"a query needs at least one token (N >= 1); got shape {shape}")
    if d is not None and shape[-1] != d:
        raise QueryShapeError(f"tokens must have width d = {d}; got shape {shape}")


NON_FINITE_QUERY = "a query contains NaN or infinite entries; queries must be finite real arrays"


def valid_query(X, d: int | None, single_only: bool = False) -> np.ndarray:
    """X as a finite float64 query of shape (N, d) (or a batch (B, N, d)), or QueryShapeError.

    d=None accepts any token width (the caller then fixes it from X).
    """
    return valid_query_hashed(X, d, single_only)[0]


def valid_query_hashed(
    X, d: int | None, single_only: bool = False
) -> tuple[np.ndarray, np.ndarray | None]:
    """`valid_query`, plus the `row_hashes` of X's sequences where the finite check computed them
    (large batches; None otherwise), so that duplicate detection needs no second pass."""
    what = "(N, d)" if single_only else "(N, d) or a batch (B, N, d)"
    X = real_queries(X, what)
    check_query_shape(X.shape, d, single_only)
    hashes = row_hashes(X) if X.ndim == 3 and X.size >= 4096 else None
    if not all_finite(X, hashes):
        raise QueryShapeError(NON_FINITE_QUERY)
    return X, hashes


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
