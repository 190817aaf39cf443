"""attnlab.extract.single_head: exact recovery at the information limit, query counts read from the
oracle, the paper and nuclear-norm baselines, affine heads (incl. torch.nn.MultiheadAttention),
and the errors it must raise."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import BudgetExhausted, ExtractionError, Oracle
from attnlab.evaluate import relative_error
from attnlab.extract import single_head
from attnlab.extract.single_head import METHODS, NUCLEAR_NORM_C
from attnlab.extract.single_head.directions import (
    AlignedBasis,
    ShiftedCoordinates,
    value_aligned_basis,
)
from attnlab.extract.single_head.probes import bilinear_probe
from attnlab.models import AffineHead, SingleHeadAttention
from attnlab.models.torch_heads import MultiheadReadout, affine_parameters

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def truth(head) -> dict[str, np.ndarray]:
    return {name: p.detach().double().numpy() for name, p in head.named_parameters()}


def low_rank_limit(d: int, r: int) -> int:
    return 2 * r * d - r * r + d


def extract(head, d, **kwargs):
    """Run the extractor; return (result, queries counted by the oracle during extraction)."""
    oracle = Oracle(head, d=d)
    kwargs.setdefault("fidelity_samples", 0)
    result = single_head(oracle, **kwargs)
    return result, oracle.queries - result.fidelity_queries


# -- full rank, method="adaptive" ----------------------------------------------------------------


@pytest.mark.parametrize("d", [8, 64, 256])
@pytest.mark.parametrize("scale", [0.01, 1.0, 10.0])
def test_full_rank_is_exact_with_d2_plus_d_queries(d, scale):
    head = SingleHeadAttention.random(d, scale=scale, seed=d)
    result, spent = extract(head, d)
    assert spent == result.queries == d * d + d
    assert result.dof == d * d + d
    p = truth(head)
    assert relative_error(result.W, p["W"]) <= 1e-9
    assert relative_error(result.v, p["v"]) <= 1e-9
    # the learned probe scales keep every logit well inside the sigmoid's invertible range
    assert result.info["max_abs_logit"] < 10.0


def test_queries_are_batched_not_sent_one_by_one():
    d = 64
    calls = []
    head = SingleHeadAttention.random(d, seed=3)

    def counting_target(X):
        calls.append(X.shape[0])
        return head(torch.as_tensor(X)).detach().numpy()

    oracle = Oracle(counting_target, d=d)
    result = single_head(oracle, fidelity_samples=0)
    assert sum(calls) == d * d + d
    assert len(calls) <= 2 * int(math.log2(d * d)) + 2
    assert result.info["oracle_calls"] == len(calls)


def test_fidelity_is_measured_on_fresh_queries_counted_apart():
    d = 12
    head = SingleHeadAttention.random(d, scale=2.0, seed=5)
    oracle = Oracle(head, d=d)
    result = single_head(oracle, fidelity_samples=300)
    assert result.queries == d * d + d
    assert result.fidelity_queries == 300
    assert oracle.queries == d * d + d + 300
    assert result.fidelity <= 1e-10
    X = np.random.default_rng(1).standard_normal((20, 7, d))
    np.testing.assert_allclose(
        result.predict(X), head(torch.as_tensor(X)).detach().numpy(), atol=1e-9
    )
    json.dumps(result.to_dict())


# -- known and detected rank -------------------------------------------------------------------


@pytest.mark.parametrize("d,r,scale", [(256, 8, 1.0), (256, 8, 10.0), (512, 16, 1.0)])
def test_known_rank_reaches_the_information_limit(d, r, scale):
    head = SingleHeadAttention.random(d, rank=r, scale=scale, seed=r)
    result, spent = extract(head, d, rank=r)
    assert spent == result.queries == low_rank_limit(d, r)
    assert result.dof == low_rank_limit(d, r)
    p = truth(head)
    assert relative_error(result.W, p["W"]) <= 1e-8
    assert relative_error(result.v, p["v"]) <= 1e-8


@pytest.mark.parametrize("d,r", [(64, 1), (64, 5), (128, 12), (20, 20)])
def test_auto_rank_finds_the_rank_within_four_queries_of_the_limit(d, r):
    head = SingleHeadAttention.random(d, rank=r, scale=3.0, seed=d + r)
    result, spent = extract(head, d, rank="auto")
    assert result.info["rank"] == r
    limit = low_rank_limit(d, r)
    assert limit <= spent <= limit + 2 * d + 2
    if r < d:  # the dependent column's two check rows and two dense checks
        assert spent == limit + 4
    assert relative_error(result.W, truth(head)["W"]) <= 1e-8


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 14),
    rank_fraction=st.floats(0.0, 1.0),
    log_scale=st.floats(-2.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_any_rank_any_scale_is_recovered_exactly(d, rank_fraction, log_scale, seed):
    r = max(1, round(rank_fraction * d))
    head = SingleHeadAttention.random(d, rank=r, scale=10.0**log_scale, seed=seed)
    result, spent = extract(head, d, rank=r, seed=seed)
    assert spent == low_rank_limit(d, r)
    assert relative_error(result.W, truth(head)["W"]) <= 1e-8
    detected, _ = extract(head, d, rank="auto", seed=seed)
    assert detected.info["rank"] == r


# -- the paper's algorithm, and nuclear-norm recovery --------------------------------------------


def test_paper_method_spends_d2_plus_d_and_is_exact_at_small_scale():
    d = 16
    head = SingleHeadAttention.random(d, scale=0.05, seed=2)
    result, spent = extract(head, d, method="paper")
    assert spent == d * d + d
    assert result.info["oracle_calls"] == d + 1  # one call per column, as the paper describes
    assert relative_error(result.W, truth(head)["W"]) <= 1e-9


def test_paper_method_reports_saturation_instead_of_hiding_it():
    d = 64
    head = SingleHeadAttention.random(d, scale=10.0, seed=2)
    with pytest.raises(ExtractionError, match="saturated"):
        extract(head, d, method="paper")


def test_nuclear_norm_recovers_low_rank_from_compressed_measurements():
    d, r = 20, 2
    head = SingleHeadAttention.random(d, rank=r, scale=2.0, seed=11)
    result, spent = extract(head, d, rank=r, method="nuclear-norm")
    measurements = math.ceil(NUCLEAR_NORM_C * r * 2 * d)
    assert measurements < d * d
    assert spent == measurements + d
    assert result.info["measurements"] == measurements
    assert result.info["rank_found"] == r
    assert relative_error(result.W, truth(head)["W"]) <= 1e-8


def test_nuclear_norm_with_explicit_measurement_count_and_auto_rank():
    d = 16
    head = SingleHeadAttention.random(d, rank=1, scale=1.0, seed=4)
    result, spent = extract(
        head, d, rank="auto", method="nuclear-norm", method_options={"measurements": 120}
    )
    assert spent == 120 + d
    assert result.info["rank"] == 1
    assert relative_error(result.W, truth(head)["W"]) <= 1e-8


# -- affine heads --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rank,method",
    [
        (None, "adaptive"),
        (3, "adaptive"),
        ("auto", "adaptive"),
        (None, "paper"),
        (3, "nuclear-norm"),
    ],
)
def test_affine_costs_d_plus_one_more_queries(rank, method):
    d = 24
    target_rank = None if rank in (None, "auto") else rank
    head = AffineHead.random(d, rank=target_rank, scale=0.5, seed=6)
    plain, plain_spent = extract(
        SingleHeadAttention(head.W.detach(), head.v.detach()), d, rank=rank, method=method
    )
    result, spent = extract(head, d, rank=rank, affine=True, method=method)
    assert spent == plain_spent + d + 1
    assert result.dof == plain.dof + d + 1
    p = truth(head)
    for name in "Wuvc":
        assert relative_error(result.params[name], p[name]) <= 1e-9, name


@pytest.mark.parametrize("d,seed", [(16, 0), (48, 1)])
def test_torch_multihead_attention_is_extracted_exactly(d, seed):
    module = MultiheadReadout.random(d, seed=seed)
    oracle = Oracle(module, d=d)
    result = single_head(oracle, affine=True, fidelity_samples=1000)
    assert result.queries == d * d + 2 * d + 1
    assert result.fidelity_queries == 1000
    assert result.fidelity <= 1e-9
    analytic = affine_parameters(module)
    for name in "Wuvc":
        assert relative_error(result.params[name], analytic[name]) <= 1e-9, name


def test_multihead_readout_matches_its_analytic_affine_head():
    d = 10
    module = MultiheadReadout.random(d, seed=3)
    p = affine_parameters(module)
    head = AffineHead(p["W"], p["u"], p["v"], p["c"])
    X = torch.as_tensor(np.random.default_rng(0).standard_normal((5, 9, d)))
    torch.testing.assert_close(module(X), head(X), rtol=1e-12, atol=1e-12)


# -- errors --------------------------------------------------------------------------------------


def test_zero_value_vector_is_not_identifiable():
    d = 6
    head = SingleHeadAttention(np.random.default_rng(0).standard_normal((d, d)), np.zeros(d))
    with pytest.raises(ExtractionError, match="identifiable"):
        extract(head, d)


def test_probe_orthogonal_to_v_is_refused():
    d = 5
    v = np.array([1.0, 0, 0, 0, 0])
    head = SingleHeadAttention(np.eye(d), v)
    oracle = Oracle(head, d=d)
    a = np.array([[0.0, 1.0, 0, 0, 0]])
    with pytest.raises(ExtractionError, match="a\\^T v"):
        bilinear_probe(oracle, a, np.zeros_like(a), v, 0.0)
    assert oracle.queries == 0


def test_value_aligned_basis_is_orthogonal_and_equally_aligned():
    v = np.random.default_rng(2).standard_normal(30)
    A = value_aligned_basis(v, np.random.default_rng(3))
    np.testing.assert_allclose(A.T @ A, np.eye(30), atol=1e-13)
    np.testing.assert_allclose(A.T @ v, np.linalg.norm(v) / np.sqrt(30), rtol=1e-12)
    structured = AlignedBasis(v, np.random.default_rng(3)).dense()  # the one the extractor uses
    np.testing.assert_allclose(structured.T @ structured, np.eye(30), atol=1e-13)
    np.testing.assert_allclose(structured.T @ v, np.linalg.norm(v) / np.sqrt(30), rtol=1e-12)


def _awkward_value_vector(kind: str, d: int, rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(d)
    if kind == "one-hot":
        v = np.zeros(d)
        v[d // 3] = -2.5
    elif kind == "half zero":
        v[::2] = 0.0
    elif kind == "negative":
        v = -np.abs(v)
    elif kind == "zero sum":
        v -= v.mean()
    elif kind == "tiny":
        v *= 1e-6
    return v


@settings(max_examples=60, deadline=None)
@given(
    kind=st.sampled_from(["gaussian", "one-hot", "half zero", "negative", "zero sum", "tiny"]),
    d=st.integers(2, 40),
    seed=st.integers(0, 2**16),
)
def test_shifted_coordinates_are_value_aligned_and_invert_exactly(kind, d, seed):
    """Every a_i = e_i + s has |a_i^T v| >= max |v_j| and |a_i| <= 3 (whatever v: zeros, one-hot,
    negative, summing to zero), the structured writers write A's columns, and `recover` inverts
    A^T to rounding."""
    rng = np.random.default_rng(seed)
    v = _awkward_value_vector(kind, d, rng)
    S = ShiftedCoordinates(v)
    A = S.dense()  # columns are the directions
    np.testing.assert_allclose(S.dots(v), A.T @ v, rtol=1e-13, atol=0)
    assert np.all(np.abs(S.dots(v)) >= np.max(np.abs(v)) * (1 - 1e-12))
    np.testing.assert_allclose(S.norms(), np.linalg.norm(A, axis=0), rtol=1e-13)
    assert np.all(S.norms() <= 3.0 + 1e-12) and S.shift_sum >= -1e-12  # det A = 1 + shift_sum
    index = rng.integers(0, d, 7)
    out = np.empty((7, d))
    S.write_scaled(out, index, np.full(7, 0.5))
    np.testing.assert_allclose(out, 0.5 * A.T[index], rtol=0, atol=1e-15)
    X = rng.standard_normal((d, 3))
    np.testing.assert_allclose(S.recover(A.T @ X), X, rtol=0, atol=1e-12 * np.abs(X).max())


@pytest.mark.parametrize("kind", ["one-hot", "half zero", "negative", "zero sum", "tiny"])
def test_known_rank_is_exact_for_awkward_value_vectors(kind):
    """Coordinates where v vanishes (or all of v but one) still give invertible probes: the column
    reads' shifted coordinates keep every a^T v at least max |v_j|."""
    d, r = 96, 6
    rng = np.random.default_rng(7)
    W = rng.standard_normal((d, r)) @ rng.standard_normal((r, d)) / np.sqrt(d)
    v = _awkward_value_vector(kind, d, rng)
    head = SingleHeadAttention(torch.tensor(W), torch.tensor(v))
    # one-hot answers are 0s and 1s, as coarse as a float16 service's: one generic query settles it
    check = 1 if kind == "one-hot" else 0
    result, spent = extract(head, d, rank=r)
    assert result.stages.get("precision_check", 0) == check
    assert spent == result.queries == low_rank_limit(d, r) + check
    assert relative_error(result.W, W) <= 1e-9


def test_assuming_a_higher_rank_than_the_target_has_is_reported():
    d = 20
    head = SingleHeadAttention.random(d, rank=1, seed=3)
    with pytest.raises(ExtractionError, match="lower rank"):
        extract(head, d, rank=3)


def test_budget_exhaustion_propagates_untouched():
    d = 10
    oracle = Oracle(SingleHeadAttention.random(d, seed=0), d=d, budget=d * d)
    with pytest.raises(BudgetExhausted) as info:
        single_head(oracle, fidelity_samples=0)
    assert type(info.value) is BudgetExhausted
    assert info.value.budget == d * d
    assert oracle.paid <= d * d


@pytest.mark.parametrize("rank", [0, -1, 9, 2.5, "two", True])
def test_invalid_rank_is_a_value_error(rank):
    oracle = Oracle(SingleHeadAttention.random(8, seed=0), d=8)
    with pytest.raises(ValueError, match="rank"):
        single_head(oracle, rank=rank)
    assert oracle.queries == 0


def test_unknown_method_lists_the_methods():
    oracle = Oracle(SingleHeadAttention.random(4, seed=0), d=4)
    with pytest.raises(ValueError) as info:
        single_head(oracle, method="magic")
    for method in METHODS:
        assert method in str(info.value)


def test_measurements_only_apply_to_nuclear_norm():
    oracle = Oracle(SingleHeadAttention.random(4, seed=0), d=4)
    with pytest.raises(ValueError, match="measurements"):
        single_head(oracle, method_options={"measurements": 10})
    with pytest.raises(TypeError):
        single_head(oracle, measurements=10)
    with pytest.raises(ValueError, match="measurements"):
        single_head(oracle, method="nuclear-norm", rank="auto")


def test_oracle_must_know_its_token_width():
    head = SingleHeadAttention.random(4, seed=0)
    oracle = Oracle(
        lambda X: head(torch.as_tensor(X)).detach().numpy()
    )  # a bare callable: d unknown
    with pytest.raises(ValueError, match="token width"):
        single_head(oracle)


def test_nuclear_norm_without_rank_refuses_a_dense_system_at_large_d():
    """d^2 rank-one measurements at d > 64 would need a (d^2 x d^2) dense solve: a clear refusal,
    after only the value read, instead of gigabytes of memory or a silently wrong fit."""
    from attnlab.extract.single_head.baselines import LINEAR_SOLVE_MAX_D

    d = LINEAR_SOLVE_MAX_D + 1
    oracle = Oracle(SingleHeadAttention.random(d, seed=0))
    with pytest.raises(ValueError, match="pass rank=r"):
        single_head(oracle, method="nuclear-norm", fidelity_samples=0)
    assert oracle.paid == d  # only the value read (d one-token queries) preceded the refusal


def test_nuclear_norm_is_matrix_free_and_exact_on_a_low_rank_head():
    d, r = 96, 3
    head = SingleHeadAttention.random(d, rank=r, seed=4)
    oracle = Oracle(head)
    m = 3 * r * 2 * d
    ext = single_head(
        oracle,
        rank=r,
        method="nuclear-norm",
        method_options={"measurements": m},
        seed=1,
        fidelity_samples=0,
    )
    W = head.W.detach().numpy()
    assert np.abs(ext.params["W"] - W).max() <= 1e-9 * np.abs(W).max()
    assert ext.info["solver"].endswith("(matrix-free)")
    assert oracle.queries == d + m


def test_a_declared_rank_below_w_s_is_named_by_the_fidelity_warning():
    """A full-rank W read with rank=6 is wrong (the skeleton is exact only up to the declared
    rank); the fidelity check catches it, and its warning names the declared rank as a cause."""
    from attnlab.extract.single_head import PrecisionWarning

    head = SingleHeadAttention.random(32, seed=7)
    with pytest.warns(PrecisionWarning, match=r"rank above the rank=6 declared"):
        result = single_head(Oracle(head, d=32), rank=6, seed=1)
    assert result.info["estimated_error"] is None and result.info["hidden_precision"] > 1e-3
    # a W of the declared rank does not warn
    low = SingleHeadAttention.random(32, rank=6, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        single_head(Oracle(low, d=32), rank=6, seed=1)
