"""The one seed helper: every random choice in attnlab takes an int seed, None or a Generator."""

from __future__ import annotations

import numpy as np

Seed = int | np.random.Generator | None


def as_generator(seed: Seed) -> np.random.Generator:
    """A numpy Generator from a Generator (used as is), an int seed, or None (fresh entropy).

    Anything else (a float, a string, a legacy RandomState) raises a TypeError saying what to pass.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool)):
        return np.random.default_rng(seed)
    raise TypeError(
        f"seed must be an int, None or a numpy.random.Generator, got {type(seed).__name__} "
        f"({seed!r}); pass e.g. seed=0 or seed=np.random.default_rng(0)"
    )
