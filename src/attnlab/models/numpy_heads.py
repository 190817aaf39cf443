"""Float64 numpy forwards of attention heads: what extracted surrogates evaluate (no torch).

One head:   f(X) = softmax(X W x_N + X u)^T X v + c
H heads:    f(X) = c + sum_h softmax(X W_h x_N + X u_h)^T X v_h

Inputs are batches X of shape (B, N, d); the last token x_N is every head's query. The softmax
subtracts each row's maximum first, so large logits neither overflow nor give 0/0.
"""

from __future__ import annotations

import numpy as np


def attention_weights(X: np.ndarray, W: np.ndarray, u: np.ndarray | None = None) -> np.ndarray:
    """softmax over tokens of the scores X W x_N (+ X u): (B, N) for W (d, d), (B, H, N) for (H, d, d)."""
    X = np.asarray(X, dtype=np.float64)
    W = np.asarray(W, dtype=np.float64)
    query = X[:, -1, :]
    if W.ndim == 2:
        scores = np.einsum("bnd,de,be->bn", X, W, query)
        if u is not None:
            scores = scores + X @ np.asarray(u, dtype=np.float64)
    else:
        scores = np.einsum("bnd,hde,be->bhn", X, W, query)
        if u is not None:
            scores = scores + np.einsum("bnd,hd->bhn", X, np.asarray(u, dtype=np.float64))
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights


def head_forward(
    X: np.ndarray,
    W: np.ndarray,
    v: np.ndarray,
    u: np.ndarray | None = None,
    c: float | None = None,
) -> np.ndarray:
    """f(X), shape (B,), of one head (W (d, d), v (d,)) or of H summed heads (W (H, d, d), v (H, d))."""
    X = np.asarray(X, dtype=np.float64)
    weights = attention_weights(X, W, u)
    v = np.asarray(v, dtype=np.float64)
    if v.ndim == 1:
        out = np.einsum("bn,bn->b", weights, X @ v)
    else:
        out = (weights * np.einsum("bnd,hd->bhn", X, v)).sum(axis=(1, 2))
    return out + c if c is not None else out


__all__ = ["attention_weights", "head_forward"]
