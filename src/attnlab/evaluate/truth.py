"""Generic comparisons of a recovered model with the true one (evaluation only: reads the truth).

Method-specific comparisons (canonical multi-head error, FFN neuron matching) are appended
below the generic ones by the owners of those extractors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from attnlab._random import as_generator


def relative_error(estimate, truth) -> float:
    """max |estimate - truth| / max |truth| (entry-wise); the absolute error when truth is zero."""
    estimate, truth = _same_shape(estimate, truth)
    if not truth.size:
        return 0.0
    scale = float(np.max(np.abs(truth)))
    err = float(np.max(np.abs(estimate - truth)))
    return err / scale if scale > 0 else err


def frobenius_error(estimate, truth) -> float:
    """||estimate - truth||_F / ||truth||_F; the absolute Frobenius error when truth is zero."""
    estimate, truth = _same_shape(estimate, truth)
    scale = float(np.linalg.norm(truth))
    err = float(np.linalg.norm(estimate - truth))
    return err / scale if scale > 0 else err


def _same_shape(estimate, truth) -> tuple[np.ndarray, np.ndarray]:
    estimate, truth = np.asarray(estimate, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if estimate.shape != truth.shape:
        raise ValueError(f"shapes differ: estimate {estimate.shape} vs truth {truth.shape}")
    return estimate, truth


def true_parameters(module) -> dict[str, np.ndarray]:
    """A torch module's named parameters as float64 numpy arrays (the ground truth)."""
    return {name: p.detach().double().cpu().numpy() for name, p in module.named_parameters()}


def parameter_errors(estimated: Mapping[str, Any], truth: Mapping[str, Any],
                     names: Iterable[str] | None = None) -> dict[str, float]:
    """relative_error per parameter present in both (restricted to `names` when given)."""
    names = [n for n in estimated if n in truth] if names is None else list(names)
    return {n: relative_error(estimated[n], truth[n]) for n in names if n in estimated and n in truth}


def model_outputs(model, X) -> np.ndarray:
    """Outputs of a torch module or a numpy callable on a batch X, as a float64 array."""
    X = np.asarray(X, dtype=np.float64)
    if hasattr(model, "parameters") and callable(model):  # a torch module: no autograd, numpy out
        import torch

        with torch.no_grad():
            out = model(torch.as_tensor(X))
        return out.detach().double().cpu().numpy()
    return np.asarray(model(X), dtype=np.float64)


def functional_error(truth, recovered, inputs) -> float:
    """Largest |truth(X) - recovered(X)| over the given inputs (never shown to the extractor).

    `truth`: a torch module or a numpy callable; `recovered`: an Extraction (its `predict`) or a
    numpy callable; `inputs`: one batch (B, N, d) or an iterable of batches (e.g. one per length).
    """
    predict: Callable = recovered.predict if hasattr(recovered, "predict") else recovered
    batches = [inputs] if isinstance(inputs, np.ndarray) and inputs.ndim == 3 else inputs
    worst = 0.0
    for X in batches:
        X = np.asarray(X, dtype=np.float64)
        gap = np.abs(np.asarray(predict(X), dtype=np.float64) - model_outputs(truth, X))
        worst = max(worst, float(np.max(gap)) if gap.size else 0.0)
    return worst


def gaussian_batches(d: int, n: int, lengths=(1, 1), scale: float = 1.0, seed=0) -> list[np.ndarray]:
    """About n Gaussian inputs N(0, scale^2) split evenly over the lengths lo..hi, one batch each."""
    rng = as_generator(seed)
    lo, hi = lengths
    per_length = max(1, n // (hi - lo + 1))
    return [scale * rng.standard_normal((per_length, length, d)) for length in range(lo, hi + 1)]
