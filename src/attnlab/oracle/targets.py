"""Adapters that turn what a user hands the Oracle into one numpy function (B, N, d) -> (B,).

A target may be a `torch.nn.Module` or any callable returning an array-like (numpy, torch, list).
The adapters refuse answers that are not real numbers (complex, strings, objects) instead of
silently truncating them; the Oracle checks the shape and finiteness.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import torch

from attnlab.errors import OracleError, QueryShapeError

Target = Callable[[np.ndarray], np.ndarray]


def real_queries(X, what: str) -> np.ndarray:
    """X (numpy, torch or nested lists) as a float64 array, or a QueryShapeError; complex is refused."""
    if isinstance(X, torch.Tensor):
        if X.is_complex():
            raise QueryShapeError(complex_query_message(X.dtype))
        X = X.detach().cpu().to(torch.float64).numpy()
    try:
        X = np.asarray(X)
        if X.dtype.kind == "c":
            raise QueryShapeError(complex_query_message(X.dtype))
        return X.astype(np.float64, copy=False)
    except QueryShapeError:
        raise
    except (TypeError, ValueError) as exc:
        raise QueryShapeError(f"a query must be a real array of shape {what}: {exc}") from None


def complex_query_message(dtype) -> str:
    return (
        f"a query holds complex numbers (dtype {dtype}); queries are real arrays, and the oracle will "
        f"not drop imaginary parts for you. Pass X.real if that is what you mean."
    )


def real_answers(out, who: str = "the target") -> np.ndarray:
    """`out` as a float64 array, or an OracleError if it does not hold real numbers."""
    if isinstance(out, torch.Tensor):
        if out.is_complex():
            raise OracleError(
                f"{who} answered complex numbers (dtype {out.dtype}); an oracle answers one real "
                f"number per sequence. Return the real quantity you mean (e.g. .real or .abs())."
            )
        out = out.detach().to("cpu", torch.float64).numpy()
    try:
        arr = np.asarray(out)
    except ValueError as exc:  # ragged nested lists
        raise OracleError(
            f"{who} answered something that is not an array of numbers ({exc})"
        ) from None
    if arr.dtype.kind == "c":
        raise OracleError(
            f"{who} answered complex numbers (dtype {arr.dtype}); an oracle answers one real "
            f"number per sequence. Return the real quantity you mean (e.g. .real or abs())."
        )
    if arr.dtype.kind not in "biuf":
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError):
            raise OracleError(
                f"{who} answered values of dtype {arr.dtype}, not real numbers; "
                f"return a float array of shape (B,)"
            ) from None
    return arr.astype(np.float64, copy=False)


def torch_target(module: torch.nn.Module) -> Target:
    """Wrap a module mapping (B, N, d) tensors to (B,) as a numpy target, in the module's dtype."""
    param = next(iter(module.parameters()), None)
    dtype = param.dtype if param is not None else torch.float64
    device = param.device if param is not None else torch.device("cpu")

    def answer(X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.as_tensor(X, dtype=dtype, device=device))
        return real_answers(out, f"the module {type(module).__name__}")

    return answer


def as_numpy_target(target) -> Target:
    """`target` (a torch module or a callable) as a function float64 (B, N, d) -> float64 (B,)."""
    if isinstance(target, torch.nn.Module):
        return torch_target(target)
    if not callable(target):
        raise TypeError(
            f"an oracle's target must be callable or a torch.nn.Module, got {type(target).__name__}"
        )

    def answer(X: np.ndarray) -> np.ndarray:
        return real_answers(target(X))

    return answer


def declared_width(target) -> int | None:
    """The token width a target states about itself (attnlab models and HTTP targets have `.d`)."""
    d = getattr(target, "d", None)
    return d if isinstance(d, int) and not isinstance(d, bool) else None


class CallTimedOut(Exception):
    """Raised by call_with_timeout (a class of its own: a target's own TimeoutError passes through)."""


def call_with_timeout(target: Target, X: np.ndarray, timeout: float) -> np.ndarray:
    """target(X) run on a daemon thread; CallTimedOut if it takes longer than `timeout` seconds.

    A Python thread cannot be killed: after a timeout the call runs on, abandoned, until the target
    returns or the process exits (a daemon thread does not keep the process alive).
    """
    outcome: dict = {}

    def call() -> None:
        try:
            outcome["answers"] = target(X)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    worker = threading.Thread(target=call, name="attnlab-oracle-call", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CallTimedOut(f"the target did not answer within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["answers"]
