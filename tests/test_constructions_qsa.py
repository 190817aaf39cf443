"""qSA constructions: certificates (Thm 2) and the moment curve (Thm 3), verified on the task."""

import math
from fractions import Fraction
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.constructions import (
    CertificateQSA,
    ConstructionFailed,
    MomentCurveQSA,
    smallest_certificate_qsa,
    smallest_moment_curve_precision,
)
from attnlab.constructions.exact_bits import round_rational
from attnlab.constructions.qsa_certificates import certificates, random_sign_keys
from attnlab.constructions.qsa_moment_curve import (
    curve_points,
    log_gap_floor,
    squared_product_coefficients,
)
from attnlab.models import round_to_bits
from attnlab.tasks import Batch, distinct_indices, get_task


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(4, 80), q=st.integers(1, 4))
def test_certificate_scores_exactly_one_on_its_set(seed, N, q):
    q = min(q, N)
    keys = random_sign_keys(8 * q + 16, N, seed % 1000)
    sets = distinct_indices(np.random.default_rng(seed), (5,), q, N)
    w = certificates(torch.from_numpy(keys), torch.from_numpy(sets)).numpy()
    on_support = np.take_along_axis(w @ keys, sets, axis=1)
    np.testing.assert_allclose(on_support, 1.0, atol=1e-9)


def test_keys_of_a_smaller_width_are_a_prefix_of_a_larger_one():
    small, large = random_sign_keys(70, 30, 3), random_sign_keys(200, 30, 3)
    np.testing.assert_array_equal(small * math.sqrt(70), large[:70] * math.sqrt(200))


def test_worst_case_formula_is_reached_by_its_worst_z_through_the_model():
    construction = CertificateQSA.build(N=48, q=3, d_prime=2, eps=1 / 6, key_dim=24, seed=1)
    task = get_task("qsa", N=48, q=3, d_prime=2)
    rng = np.random.default_rng(0)
    sets = distinct_indices(rng, (6,), 3, 48)
    sup = construction.worst_case_errors(sets)
    for index_set, bound in zip(sets, sup):
        y = distinct_indices(rng, (1, 48), 3, 48)
        y[0, 5] = index_set
        inputs = {"z": construction.worst_values(index_set)[None], "y": y}
        error = np.linalg.norm(construction.predict(inputs) - task.solve(inputs), axis=-1)[0, 5]
        assert error == pytest.approx(bound, rel=1e-9, abs=1e-12)
        # and no sampled z does better than the supremum
        batch = task.sample(rng, 3)
        batch.inputs["y"][:, 5] = index_set
        sampled = Batch(batch.inputs, task.solve(batch.inputs))
        errors = np.linalg.norm(construction.predict(sampled.inputs) - sampled.targets, axis=-1)[
            :, 5
        ]
        assert (errors <= bound + 1e-12).all()


@pytest.mark.parametrize("certificate", ["softmax-leak", "least-squares"])
def test_smallest_width_passes_its_own_verification_and_the_search_saw_a_failure_below(certificate):
    found = smallest_certificate_qsa(
        N=64, q=2, d_prime=3, random_sets=256, adversarial_targets=32, certificate=certificate
    )
    assert found.certificate == certificate
    assert found.holdout and found.holdout[-1]["key_dim"] == found.key_dim
    assert found.holdout[-1]["error"] <= found.eps  # judged on sets the fit never saw
    assert any(k < found.key_dim and err > found.eps for k, err in found.search.items())
    assert found.m == found.key_dim + 3
    verification = found.verify(rng=5, n=3, adversarial_targets=64)
    assert verification.random["max_error"] <= found.eps
    assert verification.n_adversarial >= 1
    assert verification.to_dict()["max_error"] == verification.max_error


@pytest.mark.slow
def test_too_narrow_or_too_coarse_a_head_fails_its_verification():
    narrow = CertificateQSA.build(N=64, q=2, d_prime=3, eps=0.25, key_dim=2)
    assert not narrow.verify(n=2).passed
    wide = CertificateQSA.build(N=64, q=2, d_prime=3, eps=0.25, key_dim=256)
    assert wide.verify(n=2).passed
    coarse = CertificateQSA.build(N=64, q=2, d_prime=3, eps=0.25, key_dim=256, precision=1)
    assert coarse.verify(n=2).max_error > wide.verify(n=2).max_error


def test_search_raises_when_nothing_in_range_passes():
    with pytest.raises(ConstructionFailed, match="no key width"):
        smallest_certificate_qsa(N=64, q=2, random_sets=32, limit=4)
    with pytest.raises(ValueError):
        CertificateQSA.build(N=16, q=2, d_prime=2, eps=1.5, key_dim=8)
    with pytest.raises(ValueError, match="q <= N"):
        smallest_certificate_qsa(N=4, q=8)


@settings(max_examples=60, deadline=None)
@given(
    value=st.floats(-1e30, 1e30, allow_nan=False, allow_subnormal=False), bits=st.integers(1, 52)
)
def test_exact_rounding_agrees_with_round_to_bits(value, bits):
    assert float(round_rational(Fraction(value), bits)) == round_to_bits(value, bits)


@pytest.mark.parametrize("N,q", [(5, 1), (7, 2), (9, 3), (10, 4)])
def test_gap_floor_is_the_true_minimum_over_all_sets(N, q):
    t = curve_points(N) / (N - 1)
    smallest = min(
        np.prod((t[j] - t[list(S)]) ** 2)
        for S in combinations(range(N), q)
        for j in range(N)
        if j not in S
    )
    assert math.exp(log_gap_floor(N, q)) == pytest.approx(smallest, rel=1e-9)


def test_squared_product_coefficients_match_numpy():
    roots = [3, -5, 7]
    expected = np.poly(np.repeat(roots, 2))[::-1]
    assert squared_product_coefficients(roots) == [round(c) for c in expected]


def test_moment_curve_is_exact_on_every_set_at_infinite_precision_and_matches_the_float_model():
    construction = MomentCurveQSA.build(N=16, q=2, d_prime=3)
    sets = construction.adversarial_sets()
    assert len(sets) == math.comb(16, 2)  # small enough to check every set
    assert construction.worst_case_errors(sets).max() <= construction.eps
    verification = construction.verify(rng=0, n=2)
    assert verification.passed
    batch = construction.task().sample(np.random.default_rng(1), 2)
    with torch.no_grad():
        float_model = construction.model()(
            torch.from_numpy(
                np.concatenate(
                    [
                        batch.inputs["z"],
                        batch.inputs["y"].astype(float),
                        np.broadcast_to(np.arange(16.0)[None, :, None], (2, 16, 1)),
                    ],
                    axis=-1,
                )
            )
        ).numpy()
    np.testing.assert_allclose(float_model, construction.predict(batch.inputs), atol=1e-6)


def test_precision_search_finds_a_passing_p_just_above_a_failing_one_and_p_grows_with_N():
    small = smallest_moment_curve_precision(N=16, q=2, random_sets=8)
    assert small.search[small.precision] <= small.eps
    assert small.search[small.precision - 1] > small.eps
    assert small.verify(rng=0, n=1).passed
    larger = smallest_moment_curve_precision(N=128, q=2, random_sets=8)
    assert larger.precision > small.precision
