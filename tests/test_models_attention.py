import numpy as np
import torch

from attnlab.models import AffineHead, SingleHeadAttention, random_low_rank


def reference_single_head(W, v, X):
    scores = X @ W @ X[-1]
    a = np.exp(scores - scores.max())
    a /= a.sum()
    return a @ (X @ v)


def test_single_head_matches_the_formula():
    head = SingleHeadAttention.random(6, seed=1)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4, 5, 6))
    out = head(torch.as_tensor(X)).detach().numpy()
    W, v = head.W.detach().numpy(), head.v.detach().numpy()
    expected = [reference_single_head(W, v, x) for x in X]
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_one_token_query_reads_v():
    head = SingleHeadAttention.random(5, seed=3)
    e = torch.eye(5, dtype=torch.float64)[:, None, :]
    np.testing.assert_allclose(
        head(e).detach().numpy(), head.v.detach().numpy(), rtol=0, atol=1e-15
    )


def test_random_low_rank_has_requested_rank_and_scale():
    rng = np.random.default_rng(0)
    W = random_low_rank(200, 3, 10.0, rng)
    assert np.linalg.matrix_rank(W) == 3
    assert 5.0 < W.std() < 20.0


def test_affine_head_query_bias_cancels_in_softmax():
    head = AffineHead.random(4, seed=2)
    rng = np.random.default_rng(1)
    X = torch.as_tensor(rng.standard_normal((3, 6, 4)))
    base = head(X)
    scores = torch.einsum("bnd,de,be->bn", X, head.W, X[:, -1]) + X @ head.u
    weights = torch.softmax(scores + 7.0, dim=-1)  # a query-side bias shifts every score equally
    shifted = torch.einsum("bn,bn->b", weights, X @ head.v) + head.c
    torch.testing.assert_close(base, shifted)
