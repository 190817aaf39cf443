"""Where to check a recovered network: points that cross every hyperplane found, and far points.

A check on random points near the origin says nothing about a hyperplane 50 units away, nor
about weights the fit could trade against the linear term there. The check points are
(1) beside each found hyperplane, on both sides, near where it was crossed, and (2) out to
`radius` along random directions and along the found normals (so they lie beyond the far
hyperplanes). A point's error is relative to the output's size at its distance from the origin
(g grows linearly with |x|, so a fixed error bound would be loose far out and strict near in).
"""

from __future__ import annotations

import numpy as np


def check_points(
    normals: np.ndarray,
    offsets: np.ndarray,
    crossings: np.ndarray,
    count: int,
    radius: float,
    scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """`count` points: half beside found hyperplanes (both sides), half out to `radius`."""
    d, n = normals.shape
    beside = count // 2 if n else 0
    points = []
    if beside:
        which = (
            rng.permutation(np.resize(np.arange(n), beside))
            if beside >= n
            else rng.choice(n, beside, replace=False)
        )
        tangent = rng.standard_normal((beside, d))
        tangent -= (
            np.sum(tangent * normals[:, which].T, axis=1, keepdims=True) * normals[:, which].T
        )
        tangent *= (
            scale
            * rng.uniform(0.0, 1.0, (beside, 1))
            / np.linalg.norm(tangent, axis=1, keepdims=True)
        )
        side = (
            rng.choice([-1.0, 1.0], beside)[:, None] * scale * rng.uniform(0.01, 1.0, (beside, 1))
        )
        points.append(crossings[which] + tangent + side * normals[:, which].T)
    far = count - beside
    if far:
        directions = rng.standard_normal((far, d)) / np.sqrt(d)
        if n:  # half of them pointing along a found normal, so they pass the far hyperplanes
            along = rng.random(far) < 0.5
            picks = rng.integers(n, size=int(along.sum()))
            directions[along] += (
                rng.choice([-1.0, 1.0], (int(along.sum()), 1)) * normals[:, picks].T
            )
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        # Half log-uniform in [scale, radius], half in the outer shell [radius / 2, radius], where
        # the points beyond a missed far hyperplane are.
        radii = scale * np.exp(rng.uniform(0.0, np.log(max(radius / scale, 1.0 + 1e-9)), (far, 1)))
        shell = rng.random(far) < 0.5
        radii[shell, 0] = rng.uniform(0.5 * radius, radius, int(shell.sum()))
        points.append(radii * directions)
    return np.vstack(points) if points else np.zeros((0, d))


def relative_gaps(
    estimate: np.ndarray, truth: np.ndarray, points: np.ndarray, scale: float
) -> np.ndarray:
    """|estimate - truth| over G (1 + |x| / scale), G = max |truth| / max (1 + |x| / scale)."""
    growth = 1.0 + np.linalg.norm(points, axis=1) / scale
    size = max(float(np.max(np.abs(truth) / growth)), 1e-300)
    return np.abs(estimate - truth) / (size * growth)
