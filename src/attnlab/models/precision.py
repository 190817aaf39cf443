"""p-bit precision: how attnlab simulates the finite-precision models of Sanford et al. (2023).

The paper's transformers compute with p-bit numbers, and its lower bounds count the m*p bits a
token's query carries. attnlab simulates this by rounding every produced number (embeddings,
queries, keys, values, logits, outputs) to a floating-point value with a p-bit significand:

    round_to_bits(x, p) = nearest value of the form  k * 2^e  with integers |k| < 2^p and e,

rounding half to even, with an unbounded exponent (in practice float64's range), so p counts
significant binary digits and the relative error is at most 2^-p:
|round_to_bits(x, p) - x| <= 2^-p |x|. Zero, infinities and NaN pass through. A finite x whose
rounding lands past the largest float (e.g. 1.5 * 2^1023 = 1.348e308 at p = 1 rounds to 2^1024) has no float
value within that bound, so it raises `PrecisionOverflowError` (an OverflowError and a
ValueError) instead of silently becoming inf. p = None means exact
(no rounding); p >= 53 leaves float64 unchanged (p >= 24 for float32).

Numpy arrays, Python floats and torch tensors are accepted and the type is kept (integer
arrays come back as float64). For torch tensors that require gradients the rounding is
straight-through: the forward value is rounded and the gradient passes as if it were the
identity, the usual way to train under quantisation.
"""

from __future__ import annotations

import numpy as np
import torch


class PrecisionOverflowError(OverflowError, ValueError):
    """A finite number whose p-bit rounding is past the float range."""


def _overflow(x, p: int) -> PrecisionOverflowError:
    return PrecisionOverflowError(
        f"rounding {x!r} to {p} significant bits lands past the float64 range (> 1.797e308): no float "
        "keeps the bound |error| <= 2^-p |x|; scale the numbers down (e.g. a smaller temperature) or use more bits"
    )


def _check_bits(p) -> int:
    if isinstance(p, bool) or not isinstance(p, (int, np.integer)):
        raise TypeError(f"precision p must be an int number of significant bits or None, got {p!r}")
    if p < 1:
        raise ValueError(f"precision p must be >= 1 significant bit, got {p}")
    return int(p)


def _round_numpy(x: np.ndarray, p: int) -> np.ndarray:
    if p >= np.finfo(x.dtype).nmant + 1:
        return x
    mantissa, exponent = np.frexp(x)  # x = mantissa * 2^exponent, 0.5 <= |mantissa| < 1
    with np.errstate(invalid="ignore", over="ignore"):
        # inf/nan keep their value through frexp, rint and ldexp; the guard only mutes warnings
        rounded = np.ldexp(np.rint(np.ldexp(mantissa, p)), exponent - p).astype(x.dtype, copy=False)
    overflowed = np.isinf(rounded) & np.isfinite(x)
    if np.any(overflowed):
        raise _overflow(float(x[overflowed].flat[0]) if np.ndim(x) else float(x), p)
    return rounded


def _round_torch(x: torch.Tensor, p: int) -> torch.Tensor:
    if p >= _torch_significand(x.dtype):
        return x
    value = x.detach()
    mantissa, exponent = torch.frexp(value)
    rounded = torch.ldexp(
        torch.round(torch.ldexp(mantissa, torch.full_like(exponent, p))), exponent - p
    )
    finite = torch.isfinite(value)
    overflowed = finite & torch.isinf(rounded)
    if bool(overflowed.any()):
        raise _overflow(float(value[overflowed].flatten()[0]), p)
    rounded = torch.where(finite, rounded, value).to(x.dtype)
    if x.requires_grad:
        return x + (rounded - value)  # straight-through: forward rounded, gradient identity
    return rounded


def _torch_significand(dtype: torch.dtype) -> int:
    return {torch.float64: 53, torch.float32: 24, torch.float16: 11, torch.bfloat16: 8}[dtype]


def round_to_bits(x, p: int | None):
    """Round every entry of `x` (numpy array, float or torch tensor) to p significant bits.

    p = None returns x unchanged. See the module docstring for the exact rule.
    """
    if p is None:
        return x
    p = _check_bits(p)
    if isinstance(x, torch.Tensor):
        if not x.is_floating_point():
            x = x.to(torch.float64)
        return _round_torch(x, p)
    if isinstance(x, (float, int, np.floating, np.integer)) and not isinstance(x, bool):
        return float(_round_numpy(np.asarray(x, dtype=np.float64), p))
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    return _round_numpy(array, p)


def is_representable(x, p: int) -> np.ndarray | bool:
    """Whether each entry of x already has at most p significant bits (round_to_bits leaves it)."""
    p = _check_bits(p)
    array = (
        x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, dtype=np.float64)
    )
    same = np.asarray(_round_numpy(array.astype(np.float64), p) == array) | np.isnan(array)
    return same if same.ndim else bool(same)
