"""models.numpy_heads: the float64 numpy head forward agrees with the torch modules it mirrors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.models import AffineHead, MultiHeadRegressor, SingleHeadAttention
from attnlab.models.canonical import MultiHeadParams
from attnlab.models.numpy_heads import attention_weights, head_forward

X = np.random.default_rng(0).standard_normal((7, 5, 4))


def torch_out(module, X):
    return module(torch.as_tensor(X)).detach().numpy()


def test_one_head_matches_single_head_attention():
    head = SingleHeadAttention.random(4, seed=2)
    W, v = head.W.detach().numpy(), head.v.detach().numpy()
    np.testing.assert_allclose(head_forward(X, W, v), torch_out(head, X), rtol=1e-13, atol=1e-13)


def test_one_affine_head_matches_affine_head():
    head = AffineHead.random(4, seed=3)
    W, u, v = (t.detach().numpy() for t in (head.W, head.u, head.v))
    np.testing.assert_allclose(
        head_forward(X, W, v, u, float(head.c.detach())), torch_out(head, X), rtol=1e-13, atol=1e-13
    )


def test_stacked_heads_match_the_multi_head_regressor_and_its_params():
    model = MultiHeadRegressor.random(4, 3, seed=4)
    Ws, vs = model.Ws.detach().numpy(), model.vs.detach().numpy()
    expected = torch_out(model, X)
    np.testing.assert_allclose(head_forward(X, Ws, vs), expected, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(MultiHeadParams.from_model(model)(X), expected, atol=1e-13)


def test_stacked_heads_are_the_sum_of_the_single_heads():
    rng = np.random.default_rng(5)
    Ws, vs, us = (
        rng.standard_normal((3, 4, 4)),
        rng.standard_normal((3, 4)),
        rng.standard_normal((3, 4)),
    )
    one_by_one = sum(head_forward(X, Ws[h], vs[h], us[h]) for h in range(3))
    np.testing.assert_allclose(head_forward(X, Ws, vs, us, 0.5), one_by_one + 0.5, atol=1e-13)


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4)])
def test_weights_are_a_distribution_even_for_huge_logits(shape):
    W = 1e6 * np.random.default_rng(6).standard_normal(shape)
    weights = attention_weights(X, W)
    assert np.all(np.isfinite(weights)) and np.all(weights >= 0)
    np.testing.assert_allclose(weights.sum(axis=-1), 1.0, atol=1e-12)
