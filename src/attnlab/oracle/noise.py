"""Noise models for the Oracle: what a learner sees instead of the exact answer.

Each model is a callable `(y, X, rng) -> y'` (the Oracle applies it to every fresh answer) and
describes itself to extractors:

- `tau`: the worst-case absolute error of one answer (`math.inf` for Gaussian noise);
- `rel`: a worst-case error relative to |y| (rounding), so `bound(y) = tau + rel * |y|`;
- `random`: whether asking the same query again gives an independent error (only then do
  repeats average noise away; rounding and adversarial noise answer a repeat identically);
- `scale(y)`: the typical (standard-deviation-like) error, used for error estimates.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from attnlab.oracle.targets import as_numpy_target as _as_numpy_target

# float32 / float16 unit roundoff (round to nearest) and their smallest subnormal spacing / 2.
_F32_REL, _F32_ABS = 2.0**-24, 2.0**-150
_F16_REL, _F16_ABS = 2.0**-11, 2.0**-25


class Noise:
    """Base class: the bounds every noise model reports."""

    tau: float = 0.0
    rel: float = 0.0
    random: bool = False

    def bound(self, y) -> np.ndarray:
        """Worst-case |error| of an answer whose exact value is about y."""
        return self.tau + self.rel * np.abs(np.asarray(y, dtype=np.float64))

    def scale(self, y) -> np.ndarray:
        """Typical |error| (a standard deviation) of an answer of about y."""
        return self.bound(y) / math.sqrt(3.0)

    def __call__(self, y: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


def _check_tau(tau: float, name: str = "tau") -> float:
    tau = float(tau)
    if not (tau >= 0 and math.isfinite(tau)):
        raise ValueError(f"{name} must be a finite number >= 0, got {tau!r}")
    return tau


@dataclass
class BoundedNoise(Noise):
    """Adds eta ~ Uniform[-tau, tau], independently for every answer (also for repeats)."""

    tau: float
    random: bool = field(default=True, init=False)

    def __post_init__(self):
        self.tau = _check_tau(self.tau)

    def __call__(self, y, X, rng):
        return y + rng.uniform(-self.tau, self.tau, size=np.shape(y))


@dataclass
class GaussianNoise(Noise):
    """Adds eta ~ N(0, sigma^2). Unbounded: `tau` is inf; `scale` is sigma."""

    sigma: float
    random: bool = field(default=True, init=False)

    def __post_init__(self):
        self.sigma = _check_tau(self.sigma, "sigma")
        self.tau = math.inf

    def bound(self, y):
        # Not a worst case (there is none): 6 sigma, exceeded with probability 2e-9 per answer.
        return np.full(np.shape(y), 6.0 * self.sigma)

    def scale(self, y):
        return np.full(np.shape(y), self.sigma)

    def __call__(self, y, X, rng):
        return y + self.sigma * rng.standard_normal(np.shape(y))


@dataclass
class AdversarialNoise(Noise):
    """|eta| = tau always, signed the worst way, and the same answer for a repeated query.

    Strategy. For a two-token query [x_1; x_2] the answer is y = y_2 + alpha (y_1 - y_2) with
    y_i the answer to the one-token query [x_i] (for a single head, v^T x_i) and alpha the
    attention on x_1. Learners invert the sigmoid on alpha, which amplifies errors most near
    alpha in {0, 1}; the adversary pushes alpha toward the nearer saturating end,
    eta = tau * sign(alpha - 1/2) * sign(y_1 - y_2). It needs the token answers y_i, so it
    needs white-box access: pass `target` (the same model the Oracle answers for). Without a
    target, and for other query lengths, it biases every answer outward, eta = tau * sign(y),
    a systematic error that no averaging over repeats or designs can remove.
    """

    tau: float
    target: Callable | None = field(default=None, repr=False)

    def __post_init__(self):
        self.tau = _check_tau(self.tau)
        self._answer = None if self.target is None else _as_numpy_target(self.target)

    def scale(self, y):
        return self.bound(y)

    def __call__(self, y, X, rng):
        y = np.asarray(y, dtype=np.float64)
        eta = self.tau * np.where(y >= 0, 1.0, -1.0)
        X = np.asarray(X, dtype=np.float64)
        if self._answer is not None and X.ndim == 3 and X.shape[1] == 2:
            tokens = np.concatenate([X[:, :1, :], X[:, 1:, :]], axis=0)
            token_answers = self._answer(tokens)
            y1, y2 = token_answers[: X.shape[0]], token_answers[X.shape[0] :]
            spread = y1 - y2
            with np.errstate(divide="ignore", invalid="ignore"):
                alpha = np.where(spread != 0, (y - y2) / np.where(spread != 0, spread, 1.0), 0.5)
            push = np.sign(alpha - 0.5) * np.sign(spread)
            eta = np.where(push != 0, self.tau * push, eta)
        return y + eta


@dataclass
class RoundDigits(Noise):
    """Rounds every answer to `digits` significant decimal digits (as a text API would)."""

    digits: int

    def __post_init__(self):
        if int(self.digits) != self.digits or not 1 <= self.digits <= 17:
            raise ValueError(f"digits must be an integer in [1, 17], got {self.digits!r}")
        self.digits = int(self.digits)
        self.rel = 0.5 * 10.0 ** (1 - self.digits)
        self.tau = 0.0

    def __call__(self, y, X, rng):
        y = np.asarray(y, dtype=np.float64)
        out = np.array([float(f"{value:.{self.digits - 1}e}") for value in y.ravel()])
        return out.reshape(y.shape)


@dataclass
class RoundFloat32(Noise):
    """Rounds every answer to the nearest float32 (a model served in single precision)."""

    def __post_init__(self):
        self.rel, self.tau = _F32_REL, _F32_ABS

    def __call__(self, y, X, rng):
        return np.asarray(y, dtype=np.float32).astype(np.float64)


@dataclass
class RoundFloat16(Noise):
    """Rounds every answer to the nearest float16; |y| > 65504 overflows and the Oracle refuses it."""

    def __post_init__(self):
        self.rel, self.tau = _F16_REL, _F16_ABS

    def __call__(self, y, X, rng):
        with np.errstate(over="ignore"):
            return np.asarray(y, dtype=np.float16).astype(np.float64)


NOISE_KINDS = ("bounded", "adversarial", "gaussian", "float32", "float16", "digits")


def make_noise(
    kind: str | None,
    tau: float | None = None,
    digits: int | None = None,
    target: Callable | None = None,
) -> Noise | None:
    """Build a noise model by name (used by the CLI). `kind` None or "none" means exact answers.

    bounded/adversarial need `tau`, gaussian takes `tau` as sigma, digits needs `digits`;
    `target` gives the adversary white-box access (see AdversarialNoise).
    """
    if kind is None or kind == "none":
        return None
    kind = kind.lower()
    if kind in ("bounded", "adversarial", "gaussian"):
        if tau is None:
            raise ValueError(f"noise {kind!r} needs a size: pass tau (--tau), e.g. --tau 1e-6")
        if kind == "bounded":
            return BoundedNoise(tau)
        if kind == "gaussian":
            return GaussianNoise(tau)
        return AdversarialNoise(tau, target=target)
    if kind == "digits":
        if digits is None:
            raise ValueError(
                "noise 'digits' needs the number of significant digits: pass digits (--digits), e.g. 6"
            )
        return RoundDigits(digits)
    if kind == "float32":
        return RoundFloat32()
    if kind == "float16":
        return RoundFloat16()
    raise ValueError(
        f"unknown noise kind {kind!r}; choose one of {', '.join(NOISE_KINDS)} (or none)"
    )


def noise_bound(noise, y) -> np.ndarray:
    """Worst-case error of answers y under `noise` (0 for an exact oracle; foreign callables: unknown -> 0)."""
    if noise is None:
        return np.zeros(np.shape(y))
    if hasattr(noise, "bound"):
        return np.asarray(noise.bound(y), dtype=np.float64)
    return np.full(np.shape(y), float(getattr(noise, "tau", 0.0)))


def noise_scale(noise, y) -> np.ndarray:
    """Typical error of answers y under `noise` (see Noise.scale)."""
    if noise is None:
        return np.zeros(np.shape(y))
    if hasattr(noise, "scale"):
        return np.asarray(noise.scale(y), dtype=np.float64)
    return noise_bound(noise, y) / math.sqrt(3.0)


__all__ = [
    "AdversarialNoise",
    "BoundedNoise",
    "GaussianNoise",
    "NOISE_KINDS",
    "Noise",
    "RoundDigits",
    "RoundFloat16",
    "RoundFloat32",
    "make_noise",
    "noise_bound",
    "noise_scale",
]
