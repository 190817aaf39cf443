"""The robust noisy estimator's probe geometry: tokens within max_token_norm, and the paper compared fairly."""

import math

import numpy as np
import pytest
import torch

from attnlab import Oracle
from attnlab.extract.noisy import noisy_single_head
from attnlab.models import SingleHeadAttention
from attnlab.oracle.noise import GaussianNoise, RoundDigits


def _recording_head(head, norms):
    def answer(X):
        X = np.asarray(X, dtype=np.float64)
        norms.append(float(np.max(np.linalg.norm(X, axis=-1))))
        return head(torch.as_tensor(X)).detach().numpy()

    return answer


@pytest.mark.parametrize("R", [0.5, 1.0, 2.3])
def test_robust_tokens_never_exceed_max_token_norm(R):
    head = SingleHeadAttention.random(12, scale=1 / math.sqrt(12), seed=4)
    norms: list[float] = []
    oracle = Oracle(_recording_head(head, norms), d=12, noise=GaussianNoise(1e-7), seed=1)
    ex = noisy_single_head(oracle, method_options={"max_token_norm": R, "queries": 2 * 156})
    assert norms and max(norms) <= R * (1 + 1e-12)
    # the column probes use nearly all of the allowed norm (orthogonal row/column sides)
    assert max(norms) >= 0.99 * R
    assert np.linalg.norm(ex.W - head.W.detach().numpy()) < 1e-3


def _errors(head, noise, W, seed=0):
    B = float(np.max(np.abs(W)))
    R = math.hypot(1 / B, 0.5)  # the paper's largest token with the tight bound
    out = {}
    for method, options in (("paper", {"B": B}), ("robust", {"max_token_norm": R})):
        ex = noisy_single_head(
            Oracle(head, noise=noise, seed=seed + 7), method=method, method_options=options
        )
        out[method] = float(np.linalg.norm(ex.W - W))
    return out


@pytest.mark.parametrize("values", ["gaussian", "pm1"])
@pytest.mark.parametrize("noise", [GaussianNoise(1e-6), RoundDigits(6)])
def test_robust_at_least_ties_the_paper_with_its_tightest_bound_at_equal_tokens(values, noise):
    # Thm 6.1's estimator with B = max |W_ij| (the smallest bound its proof allows) and the
    # robust one with the same largest token and the same d^2 + d queries, d = 32.
    d = 32
    rng = np.random.default_rng(5)
    W = rng.standard_normal((d, d)) / math.sqrt(d)
    v = rng.standard_normal(d) if values == "gaussian" else rng.choice([-1.0, 1.0], d)
    errors = _errors(SingleHeadAttention(W, v), noise, W)
    assert errors["robust"] <= errors["paper"]
