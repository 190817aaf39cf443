"""Extraction of a one-layer transformer T(X) = w_o^T ReLU(A^T z(X)), z(X) = X^T softmax(X W x_N).

Two stages, as in the paper's reduction (Section 3 of the reference notes):

1. The FFN, from one-token queries: softmax over one token is 1, so z([x]) = x and T([x]) is the
   bias-free ReLU network g(x) = w_o^T ReLU(A^T x), extracted by `relu_ffn` (bias=False).
2. W, from the antisymmetric oracle D(X) = T(X) - T(-X). Scores are even in X, so z(-X) = -z(X),
   and ReLU(s) - ReLU(-s) = s gives D(X) = (A w_o)^T z(X): a single-head regressor with
   v = A w_o. `oracle.derived.antisymmetric_oracle` builds D as an Oracle over the parent; every derived query
   sends X and -X, so the parent counts (and budgets) 2 queries for it.

With the residual, z(X) = X^T softmax(X W x_N) + x_N:
- one-token queries give z([x]) = 2x, so stage 1 learns g(2x); g is positively homogeneous,
  so g itself follows exactly (w_o halves);
- D(X) = f_{W, v}(X) + v^T x_N. The extra term is known after stage 1 (v = A w_o is the odd part
  of g), so the derived oracle subtracts v^T x_N and stage 2 sees a plain head again.
Everything stays identifiable: W (the softmax of a head is invariant to nothing but W itself)
and g up to the ReLU network's own symmetries (neuron permutation and positive rescaling).
Only when A w_o = 0 is W invisible: D is then identically zero, and the extractor says so.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from attnlab._random import as_generator
from attnlab.errors import ExtractionError
from attnlab.extract.convention import resolve_method, token_width
from attnlab.extract.ffn import relu_ffn
from attnlab.extract.result import Extraction
from attnlab.extract.single_head import single_head
from attnlab.models.numpy_heads import attention_weights
from attnlab.oracle import Oracle
from attnlab.oracle.derived import antisymmetric_oracle

# ||A w_o|| below this fraction of sum_j |w_j| ||a_j|| counts as A w_o = 0.
VALUE_VECTOR_TOL = 1e-9

METHODS: dict[str, dict[str, Any]] = {
    # head_method: the single_head method of stage 2; ffn: relu_ffn's method_options for stage 1
    "antisymmetric": {"head_method": "adaptive", "ffn": None},
}


def one_layer_transformer(
    oracle: Oracle,
    *,
    residual: bool = False,
    hidden: int | None = None,
    method: str = "antisymmetric",
    method_options: dict | None = None,
    seed=0,
    fidelity_samples: int = 500,
    progress: bool = False,
) -> Extraction:
    """Recover (W, the FFN) of a one-layer transformer behind `oracle`.

    Parameters
    ----------
    residual : whether z(X) includes the residual x_N (see the module docstring).
    hidden : the FFN width if known (only for reporting unseen neurons).
    method, method_options : "antisymmetric", with options head_method (the `single_head`
        method for stage 2, default "adaptive") and ffn (`relu_ffn`'s method_options).
    seed : int or numpy Generator.
    fidelity_samples : fresh random sequences (lengths 1..32) for the fidelity check; 0 skips it.
    progress : passed on to the FFN stage.

    Returns an Extraction with params W, v (= A w_o), A (d, n) unit columns and w (n,) of the FFN
    as seen on z, linear (d,) (zero unless the FFN's orientation was left unresolved); stages
    {"ffn": ..., "attention": ...} in parent queries; dof = d^2 + the FFN's.
    """
    opts = resolve_method(method, method_options, METHODS)
    d = token_width(oracle)
    rng = as_generator(seed)
    started, started_queries = time.perf_counter(), oracle.queries

    ffn = relu_ffn(
        oracle,
        hidden=hidden,
        bias=False,
        method_options=opts["ffn"],
        seed=rng,
        fidelity_samples=0,
        progress=progress,
    )
    after_ffn = oracle.queries
    # On one token z = 2x with the residual; g(z) = T([z/2]) = T([z]) / 2 by homogeneity.
    shrink = 0.5 if residual else 1.0
    A, w, linear = ffn.params["A"], shrink * ffn.params["w"], shrink * ffn.params["linear"]
    v_ffn = A @ w + 2.0 * linear  # the odd part of g: g(z) - g(-z) = v^T z
    # The same v read directly: g is positively homogeneous, so v_i = g(e_i) - g(-e_i) exactly,
    # to rounding, where the sum over the recovered neurons carries their (small) errors. The
    # residual correction below is amplified by the head stage, so it takes this one.
    before_v = oracle.queries
    basis = np.vstack([np.eye(d), -np.eye(d)])[:, None, :]
    answers = np.asarray(oracle(basis), dtype=np.float64)
    v = (answers[:d] - answers[d:]) * shrink
    value_queries = oracle.queries - before_v
    if np.linalg.norm(v) <= VALUE_VECTOR_TOL * max(float(np.sum(np.abs(w))), 1e-300):
        raise ExtractionError(
            f"A w_o = 0 (|A w_o| = {np.linalg.norm(v):.2e}): T(X) - T(-X) vanishes, so the attention weights "
            f"never reach the output through an odd part and W is not identifiable by this reduction. "
            f"The FFN was recovered ({ffn.info['neurons_found']} neurons) but W cannot be."
        )

    correction = (lambda X: X[:, -1, :] @ v) if residual else None
    derived = antisymmetric_oracle(oracle, correction)
    head = single_head(derived, method=opts["head_method"], seed=rng, fidelity_samples=0)
    W = head.params["W"]
    consistency = float(
        max(np.linalg.norm(head.params["v"] - v), np.linalg.norm(v_ffn - v)) / np.linalg.norm(v)
    )

    def surrogate(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        z = np.einsum("bn,bnd->bd", attention_weights(X, W), X)
        if residual:
            z = z + X[:, -1, :]
        return np.maximum(z @ A, 0.0) @ w + z @ linear

    stages = {
        "ffn": after_ffn - started_queries + value_queries,
        "attention": oracle.queries - after_ffn - value_queries,
    }
    info = {
        "residual": residual,
        "ffn": ffn.info,
        "ffn_stages": ffn.stages,
        "head": head.info,
        "derived_queries": head.queries,
        "value_consistency": consistency,
    }
    assert ffn.dof is not None  # relu_ffn always states its dof
    result = Extraction(
        params={"W": W, "v": v, "A": A, "w": w, "linear": linear},
        queries=oracle.queries - started_queries,
        method=method,
        dof=d * d + ffn.dof,  # W, plus the FFN modulo neuron rescaling
        seconds=time.perf_counter() - started,
        stages=stages,
        info=info,
        surrogate=surrogate,
    )
    if fidelity_samples:
        result.check_fidelity(oracle, fidelity_samples, int(rng.integers(2**31)))
    return result


__all__ = ["antisymmetric_oracle", "one_layer_transformer"]
