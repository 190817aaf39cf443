import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import BudgetExhausted, ExtractionError, Oracle
from attnlab.evaluate.truth import ffn_parameter_error, ffn_radius_errors
from attnlab.extract.ffn import relu_ffn
from attnlab.models import ReluFFN


def _truth(net):
    b = net.b.detach().numpy() if net.has_bias else None
    return net.A.detach().numpy(), net.w.detach().numpy(), b, float(net.c.detach())


def _radius_errors(net, ex, n=1000, seed=99):
    """Relative error at radius 1, 10, 100 on points crossing the true hyperplanes."""
    return ffn_radius_errors(net, ex, net.A.detach().numpy(), n=n, seed=seed)


@pytest.mark.parametrize("bias", [True, False])
def test_exact_extraction_at_d32_m64_out_to_radius_100(bias):
    d, m = 32, 64
    net = ReluFFN.random(d, m, bias=bias, seed=11)
    oracle = Oracle(net, d=d)
    ex = relu_ffn(oracle, bias=bias, hidden=m, seed=3)
    assert max(_radius_errors(net, ex).values()) <= 1e-8
    assert ex.info["exact"] and ex.info["error_bound"] <= 1e-8
    assert ex.fidelity <= 1e-8 * 100 and ex.info["fidelity_relative"] <= 1e-8
    assert ex.queries == oracle.queries - ex.fidelity_queries
    assert sum(ex.stages.values()) == ex.queries
    assert ex.info["neurons_found"] == m and ex.info["neurons_unseen"] == 0
    assert not ex.info["linear_term_kept"]  # orientation resolved: a plain ReLU network came back
    assert ex.dof == (m * (d + 1) + 1 if bias else m * d)
    err = ffn_parameter_error(ex, *_truth(net))
    assert err["matched"] == m and err["wrong_orientation"] == 0
    assert (
        err["row_error"] <= 1e-8 and err["bias_error"] <= 1e-8 and err["weight_rel_error"] <= 1e-8
    )
    assert err["c_error"] <= 1e-8
    json.dumps(ex.to_dict())  # results serialise
    if not bias:
        assert np.all(ex.params["b"] == 0) and float(ex.params["c"]) == 0.0


@pytest.mark.slow
@pytest.mark.parametrize("bias", [True, False])
def test_formerly_wrong_d64_m256_is_exact_out_to_radius_100(bias):
    # Issue 13: with biases, seed 0 came back with fidelity 3.8e-10 but 18% error at radius 100;
    # bias-free, the kink search did not converge.
    d, m = 64, 256
    net = ReluFFN.random(d, m, bias=bias, seed=0)
    ex = relu_ffn(
        Oracle(net, d=d),
        bias=bias,
        hidden=m,
        seed=1,
        method_options={"orientation_time_limit": 2.0},
    )
    assert ex.info["neurons_found"] == m and ex.info["exact"]
    assert max(_radius_errors(net, ex).values()) <= 1e-8


@pytest.mark.slow
def test_formerly_failing_bias_free_128x128_is_exact():
    net = ReluFFN.random(128, 128, bias=False, seed=0)
    ex = relu_ffn(Oracle(net, d=128), bias=False, hidden=128, seed=1)
    assert ex.info["neurons_found"] == 128 and ex.info["orientation"] == "linear"
    assert max(_radius_errors(net, ex).values()) <= 1e-8


@pytest.mark.slow
@pytest.mark.parametrize("bias, seed", [(True, 3), (False, 1)])
def test_wide_and_shallow_16x512_is_exact_with_few_queries_per_parameter(bias, seed):
    # Issue 13: 663 queries per parameter at this shape (the kink search re-searched crowded
    # kinks); later, spurious twin neurons made these seeds raise "not exact".
    d, m = 16, 512
    net = ReluFFN.random(d, m, bias=bias, seed=seed)
    oracle = Oracle(net, d=d)
    ex = relu_ffn(
        oracle, bias=bias, hidden=m, seed=seed + 1, method_options={"orientation_time_limit": 1.0}
    )
    assert ex.info["neurons_found"] == m and ex.info["exact"]
    assert max(_radius_errors(net, ex).values()) <= 1e-8
    parameters = (d + 2) * m + 1 if bias else (d + 1) * m
    assert oracle.queries / parameters < 10  # Carlini, Jagielski, Mironov 2020: ~29.5


@pytest.mark.slow
@pytest.mark.parametrize("d, m, seed", [(64, 256, 16), (16, 512, 6)])
def test_formerly_silent_far_field_errors_are_gone(d, m, seed):
    # Issue 13: benchmarks/ffn.py --seeds 20 found these two biased runs exact by the
    # extractor's own check but 1.3e-8 and 1.4e-8 off at radius 100 (threshold 1e-8). The
    # measured weights were right to ~1e-10; the least-squares output-layer fit on points near
    # the origin (condition ~1e6) moved them. The fit now also uses points out to check_radius.
    # Same run as the benchmark's (its options, its error points); measured after: <= 8e-10.
    net = ReluFFN.random(d, m, bias=True, seed=seed)
    oracle = Oracle(net, d=d)
    ex = relu_ffn(
        oracle,
        bias=True,
        hidden=m,
        seed=seed + 1,
        method_options={"orientation_time_limit": 5.0},
        fidelity_samples=0,
    )
    assert ex.info["exact"] and ex.info["neurons_found"] == m
    errors = ffn_radius_errors(net, ex, net.A.detach().numpy(), n=2000, seed=seed + 999)
    assert max(errors.values()) <= 1e-8
    assert ex.info["error_bound"] <= 1e-8
    assert sum(ex.stages.values()) == ex.queries == oracle.queries


def test_far_hyperplanes_are_found_by_the_check_and_its_repairs():
    # Hyperplanes 50..200 from the origin: random lines of span 20 cannot reach them, so only
    # the check (out to radius 100 * scale, along found normals) and its repair lines can.
    d, m = 6, 10
    net = ReluFFN.random(d, m, bias=True, seed=2, far=3)
    ex = relu_ffn(
        Oracle(net, d=d),
        hidden=m,
        seed=0,
        method_options={"span": 20.0, "check_radius": 250.0, "check_points": 400},
    )
    assert ex.info["exact"]
    errors = ffn_radius_errors(net, ex, net.A.detach().numpy(), radii=(1.0, 10.0, 100.0, 250.0))
    assert max(errors.values()) <= 1e-8


def test_a_missed_neuron_raises_rather_than_returning_a_wrong_network():
    d, m = 6, 10
    net = ReluFFN.random(d, m, bias=True, seed=2, far=3)
    no_repairs = {"span": 20.0, "check_radius": 250.0, "repair_rounds": 0}
    with pytest.raises(ExtractionError, match="not exact"):
        relu_ffn(Oracle(net, d=d), seed=0, method_options=no_repairs)
    ex = relu_ffn(Oracle(net, d=d), seed=0, method_options={**no_repairs, "if_inexact": "return"})
    assert ex.info["exact"] is False and ex.info["error_bound"] > 1e-8
    # the bound is honest: the true error at radius 250 is of its order, not below it
    far = ffn_radius_errors(net, ex, net.A.detach().numpy(), radii=(250.0,))[250.0]
    assert far > 1e-8


def test_a_smooth_target_is_refused():
    oracle = Oracle(lambda X: np.tanh(X[:, 0, :] @ np.linspace(0.5, 1.5, 4)), d=4)
    with pytest.raises(ExtractionError):
        relu_ffn(oracle, seed=0)


@pytest.mark.parametrize("init", ["he", "gaussian"])
def test_dead_neurons_and_he_init_are_exact(init):
    d, m = 12, 24
    net = ReluFFN.random(d, m, bias=True, seed=4, init=init, dead=0.25)
    ex = relu_ffn(Oracle(net, d=d), hidden=m, seed=1)
    alive = int(((net.A.detach().norm(dim=0) > 0) & (net.w.detach() != 0)).sum())
    assert ex.info["neurons_found"] == alive and ex.info["neurons_unseen"] == m - alive
    assert max(_radius_errors(net, ex).values()) <= 1e-8


@given(
    d=st.integers(2, 8),
    m=st.integers(1, 12),
    bias=st.booleans(),
    init=st.sampled_from(["gaussian", "he"]),
    dead=st.sampled_from([0.0, 0.25]),
    seed=st.integers(0, 10_000),
)
@settings(max_examples=25, deadline=None)
def test_small_random_networks_are_exact_out_to_radius_100(d, m, bias, init, dead, seed):
    net = ReluFFN.random(d, m, bias=bias, seed=seed, init=init, dead=dead)
    alive = int(((net.A.detach().norm(dim=0) > 0) & (net.w.detach() != 0)).sum())
    if alive == 0:  # an affine target: nothing to find, and the extractor says so
        with pytest.raises(ExtractionError, match="no kink"):
            relu_ffn(Oracle(net, d=d), bias=bias, seed=seed)
        return
    ex = relu_ffn(Oracle(net, d=d), bias=bias, hidden=m, seed=seed, fidelity_samples=0)
    assert ex.info["exact"]
    assert max(_radius_errors(net, ex, n=400).values()) <= 1e-8


def test_dead_and_duplicate_neurons_are_reported_not_hidden():
    rng = np.random.default_rng(5)
    d = 6
    A = rng.standard_normal((d, 5))
    w = rng.standard_normal(5)
    b = rng.standard_normal(5)
    w[1] = 0.0  # dead: no effect on g
    A[:, 4], b[4] = 2.5 * A[:, 3], 2.5 * b[3]  # duplicate hyperplane of neuron 3
    net = ReluFFN(A, w, b, c=0.3)
    ex = relu_ffn(Oracle(net, d=d), hidden=5, seed=1)
    assert ex.info["neurons_found"] == 3
    assert ex.info["neurons_unseen"] == 2 and "duplicate" in ex.info["unseen_reason"]
    assert max(_radius_errors(net, ex).values()) <= 1e-8


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


def test_convention_options_are_validated_and_old_names_warn():
    net = ReluFFN.random(4, 3, seed=0)
    with pytest.raises(ValueError, match="method_options are"):
        relu_ffn(Oracle(net, d=4), method_options={"no_such_option": 1})
    with pytest.raises(ValueError, match="unknown method"):
        relu_ffn(Oracle(net, d=4), method="nope")
    with pytest.raises(ValueError, match="if_inexact"):
        relu_ffn(Oracle(net, d=4), method_options={"if_inexact": "ignore"})
    with pytest.raises(TypeError):
        relu_ffn(Oracle(net, d=4), 4)  # everything after the oracle is keyword-only
    first = relu_ffn(Oracle(net, d=4), hidden=3, seed=np.random.default_rng(0))
    again = relu_ffn(Oracle(net, d=4), hidden=3, seed=0)  # an int seed is default_rng(seed)
    assert (
        first.queries == again.queries
        and first.info["neurons_unseen"] == again.info["neurons_unseen"]
    )


def test_relu_ffn_module_reads_one_vector_per_query():
    net = ReluFFN.random(3, 2, seed=0)
    x = torch.randn(4, 3, dtype=torch.float64)
    assert torch.equal(net(x), net(x[:, None, :]))
    with pytest.raises(ValueError, match="one-token"):
        net(torch.zeros(2, 2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="far hyperplanes need biases"):
        ReluFFN.random(3, 4, bias=False, far=1)


def test_exact_says_how_far_it_was_checked():
    """Hyperplanes ~1000 out lie beyond the check: the network there is affine, read exactly, and
    the result says how far "exact" reaches and why neurons went unseen."""
    d, m = 8, 16
    net = ReluFFN.random(d, m, bias=True, seed=0)
    with torch.no_grad():
        net.b *= 1000.0
    result = relu_ffn(Oracle(net, d=d), hidden=m, seed=0)
    assert result.info["exact"] and result.info["exact_radius"] == 100.0
    assert result.info["neurons_unseen"] > 0
    assert "too far out for the search lines" in result.info["unseen_reason"]
    rng = np.random.default_rng(1)
    X = rng.standard_normal((200, 1, d))
    X *= rng.uniform(1.0, 100.0, (200, 1, 1)) / np.linalg.norm(X, axis=2, keepdims=True)
    truth = net(torch.tensor(X)).detach().numpy()
    assert np.max(np.abs(result.surrogate(X) - truth)) <= 1e-8 * np.max(np.abs(truth))
