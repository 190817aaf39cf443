"""Multi-head non-identifiability: the symmetries hold, the canonical form sees through them, and
nothing else (two genuinely different heads stay different)."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import Oracle
from attnlab.extract import single_head
from attnlab.models import MultiHeadRegressor, SingleHeadAttention, random_orthogonal_heads
from attnlab.models.canonical import (
    MultiHeadParams,
    add_null_head,
    canonical,
    canonical_error,
    equivalent,
    equivalent_pair,
    maps_agree,
    match_heads,
    permute_heads,
    resplit_shared,
    single_head_probes,
    split_head,
)


def random_params(d, heads, seed, scale=1.0):
    return MultiHeadParams.from_model(MultiHeadRegressor.random(d, heads, scale=scale, seed=seed))


# -- the model ------------------------------------------------------------------------------
def test_model_is_the_sum_of_its_single_heads_and_matches_numpy():
    model = MultiHeadRegressor.random(5, 3, seed=1)
    X = torch.as_tensor(np.random.default_rng(0).standard_normal((7, 6, 5)))
    heads = [SingleHeadAttention(model.Ws[h].detach(), model.vs[h].detach()) for h in range(3)]
    expected = sum(head(X) for head in heads)
    out = model(X)
    assert out.shape == (7,) and out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-13)
    np.testing.assert_allclose(
        MultiHeadParams.from_model(model)(X.numpy()), out.detach().numpy(), rtol=0, atol=1e-13
    )


def test_model_random_low_rank_and_shape_errors():
    model = MultiHeadRegressor.random(6, 2, rank=2, seed=0)
    assert [np.linalg.matrix_rank(W) for W in model.Ws.detach().numpy()] == [2, 2]
    with pytest.raises(ValueError, match=r"Ws must have shape \(H, d, d\)"):
        MultiHeadRegressor(np.zeros((2, 3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="heads must be >= 1"):
        MultiHeadRegressor.random(3, 0)
    with pytest.raises(ValueError, match=r"\(B, N, d\)"):
        model(torch.zeros(3, 6, dtype=torch.float64))


def test_orthogonal_heads_live_in_their_subspaces():
    model, bases = random_orthogonal_heads(7, [2, 3], seed=3)
    Ws, vs = model.Ws.detach().numpy(), model.vs.detach().numpy()
    for h, B in enumerate(bases):
        P = B @ B.T
        np.testing.assert_allclose(P @ Ws[h] @ P, Ws[h], atol=1e-13)
        np.testing.assert_allclose(P @ vs[h], vs[h], atol=1e-13)
    assert np.max(np.abs(bases[0].T @ bases[1])) < 1e-13
    with pytest.raises(ValueError, match="sum to at most d"):
        random_orthogonal_heads(4, [3, 2])


# -- each symmetry preserves the map and the canonical form ------------------------------------
@pytest.mark.parametrize(
    "transform",
    [
        lambda p: split_head(p, head=1, parts=3, seed=5),
        lambda p: permute_heads(p, order=[2, 0, 1]),
        lambda p: add_null_head(p, seed=6, scale=4.0),
        lambda p: resplit_shared(split_head(p, 0, 2, seed=1), seed=7),
    ],
)
def test_symmetry_changes_parameters_but_not_the_map(transform):
    p = random_params(4, 3, seed=2)
    q = transform(p)
    assert q.heads != p.heads or not np.array_equal(q.W, p.W) or not np.array_equal(q.v, p.v)
    assert maps_agree(p, q, n=2000) <= 1e-12
    assert equivalent(p, q) and equivalent(q, p)
    assert canonical_error(p, q) <= 1e-12


def test_canonical_merges_equal_W_sums_v_and_drops_zero_v():
    W = np.random.default_rng(0).standard_normal((2, 3, 3))
    v = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, -1.0], [-1.0, -2.0, -3.0], [0.0, 0.0, 0.0]])
    p = MultiHeadParams(np.stack([W[0], W[1], W[0], W[1]]), v)
    c = canonical(p)
    # head 0 and 2 cancel (v sums to 0), heads 1 and 3 merge into (W[1], v[1])
    assert c.heads == 1
    np.testing.assert_array_equal(c.W[0], W[1])
    np.testing.assert_array_equal(c.v[0], v[1])
    assert canonical(c).heads == 1 and canonical_error(c, canonical(c)) == 0.0
    assert maps_agree(p, c, n=500) <= 1e-12


def test_all_zero_values_give_the_empty_canonical_form_and_the_zero_map():
    p = MultiHeadParams(np.random.default_rng(1).standard_normal((3, 4, 4)), np.zeros((3, 4)))
    empty = canonical(p)
    assert empty.heads == 0 and empty.W.shape == (0, 4, 4)
    assert maps_agree(p, empty, n=200) == 0.0


def test_genuinely_different_heads_are_not_equivalent_and_their_maps_differ():
    p = random_params(4, 2, seed=3)
    W = p.W.copy()
    W[1, 0, 2] += 1e-3
    q = MultiHeadParams(W, p.v)
    assert not equivalent(p, q)
    assert 1e-8 < maps_agree(p, q, n=2000)
    # distinct W's do not merge even when their v's are equal: two heads stay two heads
    r = MultiHeadParams(p.W, np.stack([p.v[0], p.v[0]]))
    assert canonical(r).heads == 2
    assert not equivalent(r, MultiHeadParams(p.W[:1], 2 * p.v[:1]))


def test_errors_say_what_is_wrong():
    p = random_params(3, 2, seed=0)
    with pytest.raises(ValueError, match="permutation"):
        permute_heads(p, order=[0, 0])
    with pytest.raises(ValueError, match=r"head must be in \[0, 2\)"):
        split_head(p, head=2)
    with pytest.raises(ValueError, match="tol must be >= 0"):
        canonical(p, tol=-1)
    with pytest.raises(ValueError, match="cannot match 2 heads"):
        match_heads(p, MultiHeadParams(p.W[:1], p.v[:1]))
    with pytest.raises(ValueError, match="shape"):
        MultiHeadParams(np.zeros((2, 3, 4)), np.zeros((2, 3)))
    assert canonical_error(p, MultiHeadParams(p.W[:1], p.v[:1])) == float("inf")


# -- a single-head-style learner cannot tell equivalent parameterisations apart ---------------
def test_single_head_probes_get_identical_answers_from_an_equivalent_pair():
    p, q, steps = equivalent_pair(5, heads=2, seed=4)
    assert q.heads == p.heads + 2 and len(steps) == 3
    answers = []
    for params in (p, q):
        oracle = Oracle(params, d=5)
        answers.append(oracle.query_many(single_head_probes(5, seed=0)))
        assert oracle.queries == 5 * 5 + 5
    np.testing.assert_allclose(answers[0], answers[1], rtol=0, atol=1e-12)


def test_the_single_head_extractor_returns_the_same_head_for_both():
    p1 = random_params(4, 1, seed=8)
    q1 = permute_heads(add_null_head(split_head(p1, 0, parts=3, seed=1), seed=2, scale=3.0), seed=3)
    assert q1.heads == 4
    results = [single_head(Oracle(x, d=4), seed=0, fidelity_samples=0) for x in (p1, q1)]
    assert results[0].queries == results[1].queries == 4 * 4 + 4
    np.testing.assert_allclose(results[0].W, results[1].W, rtol=0, atol=1e-10)
    np.testing.assert_allclose(results[0].v, results[1].v, rtol=0, atol=1e-12)
    # what it finds is the canonical head: the parameters of q1 it cannot see are its symmetries
    np.testing.assert_allclose(results[1].W, canonical(q1).W[0], rtol=0, atol=1e-10)


# -- properties -----------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    heads=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    parts=st.integers(1, 3),
    scale=st.floats(0.1, 3.0),
)
def test_property_random_symmetries_preserve_map_and_canonical_form(d, heads, seed, parts, scale):
    rng = np.random.default_rng(seed)
    p = random_params(d, heads, rng, scale=scale)
    q = split_head(p, head=int(rng.integers(heads)), parts=parts, seed=rng)
    q = resplit_shared(add_null_head(q, seed=rng, scale=scale), seed=rng)
    q = permute_heads(q, seed=rng)
    assert maps_agree(p, q, n=300, lengths=(1, 16), seed=rng) <= 1e-11
    assert equivalent(p, q)
    assert canonical(q).heads == heads


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(1, 5),
    heads=st.integers(1, 3),
    seed=st.integers(0, 2**31 - 1),
    delta=st.floats(1e-3, 1.0),
)
def test_property_perturbing_a_head_breaks_equivalence(d, heads, seed, delta):
    rng = np.random.default_rng(seed)
    p = random_params(d, heads, rng)
    h, which = int(rng.integers(heads)), rng.integers(2)
    W, v = p.W.copy(), p.v.copy()
    if which:
        W[h][tuple(rng.integers(d, size=2))] += delta
    else:
        v[h][rng.integers(d)] += delta
    q = MultiHeadParams(W, v)
    assert not equivalent(p, q)
    assert maps_agree(p, q, n=300, lengths=(1, 16), seed=rng) > 1e-9


def test_affine_heads_merge_only_when_W_and_u_agree():
    rng = np.random.default_rng(4)
    W, v, u = rng.standard_normal((3, 3)), rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    same = MultiHeadParams(np.stack([W, W]), v, np.stack([u[0], u[0]]), c=0.5)
    merged = canonical(same)
    assert merged.heads == 1 and merged.c == 0.5
    np.testing.assert_allclose(merged.v[0], v.sum(axis=0))
    X = rng.standard_normal((20, 4, 3))
    np.testing.assert_allclose(merged(X), same(X), rtol=0, atol=1e-12)
    different = MultiHeadParams(np.stack([W, W]), v, u, c=0.5)
    assert canonical(different).heads == 2
    assert canonical_error(different, merged) == float("inf")
    # the constant is part of the map: a different c is a different canonical form
    assert canonical_error(MultiHeadParams(merged.W, merged.v, merged.u, c=0.0), merged) > 0.1


def test_pytorch_module_and_its_canonical_parameters_compute_the_same_map():
    import torch

    from attnlab.models.multihead import MultiheadAttentionReadout

    module = MultiheadAttentionReadout.random(6, 3, bias=True, seed=2)
    params = MultiHeadParams(**module.canonical_parameters())
    X = torch.randn(16, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(params(X.numpy()), module(X).detach().numpy(), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="heads must divide d"):
        MultiheadAttentionReadout.random(6, 4)
