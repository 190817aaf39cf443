import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import BudgetExhausted, ExtractionError, Oracle
from attnlab.evaluate import functional_error
from attnlab.extract.ffn import ffn_parameter_error, relu_ffn
from attnlab.models import ReluFFN


def _truth(net):
    b = net.b.detach().numpy() if net.has_bias else None
    return net.A.detach().numpy(), net.w.detach().numpy(), b, float(net.c.detach())


def _functional_error(net, extraction, d, n=2000, seed=99):
    x = 3.0 * np.random.default_rng(seed).standard_normal((n, 1, d))
    return functional_error(net, extraction, x)


@pytest.mark.parametrize("bias", [True, False])
def test_exact_extraction_at_d32_m64(bias):
    d, m = 32, 64
    net = ReluFFN.random(d, m, bias=bias, seed=11)
    oracle = Oracle(net, d=d)
    ex = relu_ffn(oracle, bias=bias, m=m, seed=3)
    assert _functional_error(net, ex, d) <= 1e-8
    assert ex.fidelity <= 1e-8
    assert ex.queries == oracle.queries - ex.fidelity_queries
    assert sum(ex.stages.values()) == ex.queries
    assert ex.info["neurons_found"] == m and ex.info["neurons_unseen"] == 0
    assert not ex.info["linear_term_kept"]  # orientation resolved: a plain ReLU network came back
    err = ffn_parameter_error(ex, *_truth(net))
    assert err["matched"] == m and err["wrong_orientation"] == 0
    assert err["row_error"] <= 1e-8 and err["bias_error"] <= 1e-8 and err["weight_rel_error"] <= 1e-8
    assert err["c_error"] <= 1e-8
    json.dumps(ex.to_dict())  # results serialise
    if not bias:
        assert np.all(ex.params["b"] == 0) and float(ex.params["c"]) == 0.0


@given(d=st.integers(2, 8), m=st.integers(1, 10), bias=st.booleans(), seed=st.integers(0, 10_000))
@settings(max_examples=12, deadline=None)
def test_small_random_networks_are_recovered_exactly(d, m, bias, seed):
    net = ReluFFN.random(d, m, bias=bias, seed=seed)
    ex = relu_ffn(Oracle(net, d=d), bias=bias, m=m, seed=seed, fidelity_queries=0)
    assert _functional_error(net, ex, d, n=500) <= 1e-8 * max(1.0, float(net.w.detach().abs().sum()))


def test_dead_and_duplicate_neurons_are_reported_not_hidden():
    rng = np.random.default_rng(5)
    d = 6
    A = rng.standard_normal((d, 5))
    w = rng.standard_normal(5)
    b = rng.standard_normal(5)
    w[1] = 0.0                          # dead: no effect on g
    A[:, 4], b[4] = 2.5 * A[:, 3], 2.5 * b[3]  # duplicate hyperplane of neuron 3
    net = ReluFFN(A, w, b, c=0.3)
    ex = relu_ffn(Oracle(net, d=d), m=5, seed=1)
    assert ex.info["neurons_found"] == 3
    assert ex.info["neurons_unseen"] == 2 and "duplicate" in ex.info["unseen_reason"]
    assert _functional_error(net, ex, d) <= 1e-9


def test_bias_free_extraction_refuses_a_network_with_biases():
    net = ReluFFN.random(5, 4, bias=True, seed=0)
    with pytest.raises(ExtractionError, match="bias=True"):
        relu_ffn(Oracle(net, d=5), bias=False, seed=0)


def test_an_affine_target_has_no_kinks_to_find():
    oracle = Oracle(lambda X: X[:, 0, :] @ np.arange(1.0, 5.0) + 2.0, d=4)
    with pytest.raises(ExtractionError, match="no kink"):
        relu_ffn(oracle, seed=0)


def test_budget_is_enforced_by_the_oracle():
    net = ReluFFN.random(8, 8, seed=0)
    with pytest.raises(BudgetExhausted):
        relu_ffn(Oracle(net, d=8, budget=50), seed=0)


def test_relu_ffn_module_reads_one_vector_per_query():
    net = ReluFFN.random(3, 2, seed=0)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(net(x), net(x[:, None, :]))
    with pytest.raises(ValueError, match="one-token"):
        net(torch.zeros(2, 2, 3, dtype=torch.float64))
