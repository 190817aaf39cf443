"""The output layer, the constant and (if the orientation is unresolved) the linear term.

Every refined neuron comes with two measured samples, one on each side of its hyperplane and
inside no other neuron's reach. The output weights measured from the gradient jumps are
corrected by least squares on those points (plus a few more), so every neuron's column of the
design is excited on both sides: no neuron's weight can trade against the linear term or the
constant, however far from the origin its hyperplane lies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnlab.extract.ffn.neurons import Sample


@dataclass
class Network:
    """g(x) = w^T ReLU(A^T x + b) + c + linear^T x, A's columns unit normals."""

    A: np.ndarray
    b: np.ndarray
    w: np.ndarray
    c: float
    linear: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x @ self.A + self.b, 0.0) @ self.w + self.c + x @ self.linear


def linear_term(
    samples: list[Sample], normals: np.ndarray, offsets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """The gradient the guessed orientations leave unexplained, averaged over every sample."""
    contributions = normals * weights
    estimates = [
        s.gradient - contributions @ (normals.T @ s.point + offsets > 0)
        for s in samples
        if np.all(np.isfinite(s.gradient))
    ]
    return np.mean(estimates, axis=0)


def fit_output_layer(
    points: np.ndarray,
    answers: np.ndarray,
    normals: np.ndarray,
    offsets: np.ndarray,
    weights: np.ndarray,
    linear: np.ndarray,
    bias: bool,
    keep_linear: bool,
):
    """Least-squares correction of (w, c, linear) on measured points; returns (Network, residual).

    The correction is minimum-norm: directions the points do not excite keep the measured values.
    """
    n, d = normals.shape[1], normals.shape[0]
    features = [np.maximum(points @ normals + offsets, 0.0)]
    if bias:
        features.append(np.ones((points.shape[0], 1)))
    if keep_linear:
        features.append(points)
    design = np.hstack(features)
    prior = np.concatenate([weights, [0.0] if bias else [], linear if keep_linear else []])
    correction, *_ = np.linalg.lstsq(design, answers - design @ prior, rcond=None)
    solution = prior + correction
    network = Network(
        A=normals,
        b=offsets,
        w=solution[:n],
        c=float(solution[n]) if bias else 0.0,
        linear=solution[n + int(bias) :] if keep_linear else np.zeros(d),
    )
    residual = float(np.max(np.abs(design @ solution - answers))) if answers.size else 0.0
    return network, residual
