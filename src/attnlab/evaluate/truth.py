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


def parameter_errors(
    estimated: Mapping[str, Any], truth: Mapping[str, Any], names: Iterable[str] | None = None
) -> dict[str, float]:
    """relative_error per parameter present in both (restricted to `names` when given)."""
    names = [n for n in estimated if n in truth] if names is None else list(names)
    return {
        n: relative_error(estimated[n], truth[n]) for n in names if n in estimated and n in truth
    }


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


def gaussian_batches(
    d: int, n: int, lengths=(1, 1), scale: float = 1.0, seed=0
) -> list[np.ndarray]:
    """About n Gaussian inputs N(0, scale^2) split evenly over the lengths lo..hi, one batch each."""
    rng = as_generator(seed)
    lo, hi = lengths
    per_length = max(1, n // (hi - lo + 1))
    return [scale * rng.standard_normal((per_length, length, d)) for length in range(lo, hi + 1)]


# -- ReLU FFN (helper F) ------------------------------------------------------------------------
def ffn_parameter_error(extraction, A, w, b=None, c: float = 0.0) -> dict:
    """Compare an FFN extraction with the true network modulo neuron permutation and positive rescaling.

    Neurons are matched by |cosine| of their rows; returns the largest error of the unit rows and
    scaled biases (with orientation), of the output weights w_j ||a_j||, the number matched, and
    how many matched rows had the wrong orientation (nonzero only when the orientation was left
    unresolved and a linear term kept).
    """
    from scipy.optimize import linear_sum_assignment

    A, w = np.asarray(A, dtype=np.float64), np.asarray(w, dtype=np.float64)
    b = np.zeros(A.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(A, axis=0)
    alive = (norms > 0) & (w != 0)
    true_rows = A[:, alive] / norms[alive]
    true_b, true_w = b[alive] / norms[alive], w[alive] * norms[alive]
    rows, offsets, weights = extraction.params["A"], extraction.params["b"], extraction.params["w"]
    ti, ei = linear_sum_assignment(-np.abs(true_rows.T @ rows))
    signs = np.sign(np.sum(true_rows[:, ti] * rows[:, ei], axis=0))
    matched = bool(ti.size)
    row_err = np.max(np.abs(rows[:, ei] * signs - true_rows[:, ti])) if matched else 0.0
    bias_err = np.max(np.abs(offsets[ei] * signs - true_b[ti])) if matched else 0.0
    weight_err = (
        np.max(np.abs(weights[ei] - true_w[ti])) / np.max(np.abs(true_w)) if matched else 0.0
    )
    return {
        "matched": int(ti.size),
        "true_alive": int(alive.sum()),
        "row_error": float(row_err),
        "bias_error": float(bias_err),
        "weight_rel_error": float(weight_err),
        "wrong_orientation": int(np.sum(signs < 0)),
        "c_error": float(abs(float(extraction.params["c"]) - c)),
    }


def ffn_radius_errors(
    model, recovered, A, radii=(1.0, 10.0, 100.0), n: int = 2000, seed=0
) -> dict[float, float]:
    """Relative functional error of an FFN at each radius, on points that cross the true hyperplanes.

    At radius R, half the n points have random directions and half point along a true unit
    normal (+- a_j / ||a_j|| plus a random perturbation of norm ~1), so they lie beyond the
    hyperplanes at distances up to ~0.9 R. Error: max |g_hat - g| / max |g| over those points.
    `model` is the true network (torch module or numpy callable on (B, 1, d)), `A` its (d, m)
    first-layer matrix.
    """
    rng = as_generator(seed)
    A = np.asarray(A, dtype=np.float64)
    d = A.shape[0]
    norms = np.linalg.norm(A, axis=0)
    normals = A[:, norms > 0] / norms[norms > 0]
    predict: Callable = recovered.predict if hasattr(recovered, "predict") else recovered
    errors = {}
    for radius in radii:
        u = rng.standard_normal((n, d)) / np.sqrt(d)
        if normals.shape[1]:
            half = n // 2
            picks = rng.integers(normals.shape[1], size=half)
            u[:half] += rng.choice([-1.0, 1.0], (half, 1)) * normals[:, picks].T
        X = (radius * u / np.linalg.norm(u, axis=1, keepdims=True))[:, None, :]
        truth = model_outputs(model, X)
        gap = np.abs(np.asarray(predict(X), dtype=np.float64) - truth)
        errors[float(radius)] = float(np.max(gap) / max(float(np.max(np.abs(truth))), 1e-300))
    return errors


# -- real attention heads (oracle.hf_attention) ---------------------------------------------------
def attention_head_form(
    Wq, Wk, Wv, Wo_head, readout, scaling: float, bq=None, bk=None, bv=None
) -> dict:
    """(W, u, v, c) of one head, read from its weights (rows of Wq, Wk, Wv: that head's d_head outputs).

    score_i = scaling (Wq x_N + bq)^T (Wk x_i + bk) = x_i^T W x_N + u^T x_i + (same for every i),
    W = scaling Wk^T Wq, u = scaling Wk^T bq; the head's output read along w through its slice of
    the output projection is sum_i alpha_i v^T x_i + c, v = Wv^T Wo_head^T w, c = w^T Wo_head bv.
    """
    f64 = lambda a: None if a is None else np.asarray(a, dtype=np.float64)
    Wq, Wk, Wv, Wo_head, w = f64(Wq), f64(Wk), f64(Wv), f64(Wo_head), f64(readout)
    bq = np.zeros(Wq.shape[0]) if bq is None else f64(bq)
    bv = np.zeros(Wv.shape[0]) if bv is None else f64(bv)
    return {
        "W": scaling * Wk.T @ Wq,
        "u": scaling * Wk.T @ bq,
        "v": Wv.T @ Wo_head.T @ w,
        "c": np.float64(w @ Wo_head @ bv),
    }


def hf_head_form(model, layer: int, head: int, readout) -> dict:
    """The true (W, u, v, c) of head `head` of a BERT-, GPT-2- or Llama-style HF model's layer,
    computed from its weights (what oracle.hf_attention.from_hf_attention exposes; rotary heads: the
    offset-0 form, times the rotary attention scaling squared)."""
    from attnlab.oracle.hf_attention import hf_attention_layers, out_projection_matrix

    spec = hf_attention_layers(model)[layer]
    m, dh, hidden = spec.attention, spec.head_dim, spec.hidden
    t = lambda x: None if x is None else x.detach().double().cpu().numpy()
    if spec.style == "bert":
        Wq, Wk, Wv = t(m.query.weight), t(m.key.weight), t(m.value.weight)
        bq, bk, bv = t(m.query.bias), t(m.key.bias), t(m.value.bias)
    elif spec.style == "gpt2":
        full, bias = t(m.c_attn.weight).T, t(m.c_attn.bias)  # Conv1D: y = x W + b
        Wq, Wk, Wv = full[:hidden], full[hidden : 2 * hidden], full[2 * hidden :]
        bq, bk, bv = bias[:hidden], bias[hidden : 2 * hidden], bias[2 * hidden :]
    else:
        Wq, Wk, Wv = t(m.q_proj.weight), t(m.k_proj.weight), t(m.v_proj.weight)
        bq, bk, bv = t(m.q_proj.bias), t(m.k_proj.bias), t(m.v_proj.bias)
    kv_heads = Wk.shape[0] // dh
    kv = head // (spec.num_heads // kv_heads)
    q_rows, kv_rows = slice(head * dh, (head + 1) * dh), slice(kv * dh, (kv + 1) * dh)
    scaling = float(getattr(m, "scaling", dh**-0.5))
    if spec.style == "llama":
        scaling *= float(getattr(spec.rotary, "attention_scaling", 1.0)) ** 2
    pick = lambda b, rows: None if b is None else b[rows]
    Wo = t(out_projection_matrix(spec.out_proj))[:, q_rows]
    return attention_head_form(
        Wq[q_rows],
        Wk[kv_rows],
        Wv[kv_rows],
        Wo,
        readout,
        scaling,
        pick(bq, q_rows),
        pick(bk, kv_rows),
        pick(bv, kv_rows),
    )
