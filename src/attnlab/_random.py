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


def haar_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    """A (d, d) orthogonal matrix drawn from the Haar (uniform) distribution on O(d).

    The QR factors of a standard Gaussian matrix, with each column of Q multiplied by the sign of
    R's matching diagonal entry: without that correction Q is not uniform (Mezzadri, 2007).
    This is scipy.stats.ortho_group's algorithm (scipy 1.17: the same draws from the same
    Generator, so seeded results did not move when attnlab stopped importing scipy.stats).
    d = 1 gives [[1]] or [[-1]] (one draw).
    """
    if isinstance(d, bool) or int(d) != d or d < 1:
        raise ValueError(f"d must be a positive integer (the matrix is d x d), got {d!r}")
    Q, R = np.linalg.qr(rng.standard_normal((int(d), int(d))))
    signs = np.sign(np.diag(R))
    signs[signs == 0] = 1.0  # a zero diagonal has probability 0; keep Q orthogonal if it happens
    return Q * signs[None, :]
