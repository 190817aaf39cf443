"""What a served model does to its answers before an attacker sees them: noise, then rounding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def round_significant(y: np.ndarray, digits: int) -> np.ndarray:
    """Round each value to `digits` significant decimal digits (correctly rounded, as printf does).

    Formatting through a decimal string avoids the overflow and double rounding of y * 10**k.
    """
    if digits < 1:
        raise ValueError(f"digits must be >= 1, got {digits}")
    flat = np.asarray(y, dtype=np.float64).ravel()
    return np.array([float(f"{v:.{digits - 1}e}") for v in flat], dtype=np.float64).reshape(
        np.shape(y)
    )


@dataclass(frozen=True)
class OutputDefense:
    """A NoiseModel (see attnlab.oracle) for servers: Gaussian noise of std `noise_sigma`, then rounding."""

    noise_sigma: float = 0.0
    round_digits: int | None = None

    def __post_init__(self):
        if not np.isfinite(self.noise_sigma) or self.noise_sigma < 0:
            raise ValueError(f"noise_sigma must be a finite number >= 0, got {self.noise_sigma}")
        if self.round_digits is not None and self.round_digits < 1:
            raise ValueError(
                f"round_digits must be >= 1 (or None for full precision), got {self.round_digits}"
            )

    @property
    def active(self) -> bool:
        return self.noise_sigma > 0 or self.round_digits is not None

    def __call__(self, y: np.ndarray, X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        if self.noise_sigma > 0:
            y = y + self.noise_sigma * rng.standard_normal(y.shape)
        if self.round_digits is not None:
            y = round_significant(y, self.round_digits)
        return y
