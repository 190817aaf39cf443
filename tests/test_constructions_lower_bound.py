"""Theorem 4's set-disjointness instance and the measurement of where heads stop working."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.constructions.lower_bound import (
    all_bit_vectors,
    check_instance,
    disjointness_instance,
    measure_disjointness,
    pair_code_keys,
)
from attnlab.constructions.qsa_certificates import CertificateQSA

bits = st.lists(st.integers(0, 1), min_size=1, max_size=10)


@settings(max_examples=40, deadline=None)
@given(a=bits, b_seed=st.integers(0, 2**31))
def test_qsa_at_alices_token_counts_the_intersection(a, b_seed):
    b = np.random.default_rng(b_seed).integers(0, 2, size=len(a))
    q = len(a)
    assert check_instance(a, b) == pytest.approx(2 * int(np.dot(a, b)) / q - 1)


def test_instance_shape_and_errors():
    inputs = disjointness_instance([1, 0, 1], [0, 0, 1], N=9, d_prime=2)
    assert inputs["z"].shape == (1, 9, 2) and inputs["y"].shape == (1, 9, 3)
    assert inputs["y"][0, 6].tolist() == [1, 2, 5]
    with pytest.raises(ValueError, match="N >= 2q"):
        disjointness_instance([1, 0, 1], [0, 0, 1], N=6)
    with pytest.raises(ValueError, match="0/1"):
        disjointness_instance([2, 0], [0, 1])
    with pytest.raises(ValueError, match="q <="):
        all_bit_vectors(20)


@pytest.mark.parametrize("q", [3, 6, 9])
def test_pair_code_solves_with_q_one_bit_numbers_and_fails_with_fewer(q):
    full = measure_disjointness(q, q, 1, design="pair-code")
    assert full.solves and full.query_bits == q and full.distinct_messages == 2**q
    assert full.wrong_decisions == 0 and full.witness is None
    short = measure_disjointness(q, q - 1, 1, design="pair-code")
    assert not short.solves and short.distinct_messages == 2 ** (q - 1)
    assert short.witness is not None


def test_a_witness_really_fools_the_head():
    q = 5
    measurement = measure_disjointness(q, 3, 1, design="pair-code")
    witness = measurement.witness
    head = CertificateQSA.build(2 * q + 1, q, 1, 1 / (2 * q), 3, precision=1)
    head.keys = pair_code_keys(q, 3)
    outputs, targets = [], []
    for a in (witness["a"], witness["a_prime"]):
        inputs = disjointness_instance(a, witness["b"])
        outputs.append(head.predict(inputs)[0, 2 * q, 0])
        targets.append(check_instance(a, witness["b"]))
    assert outputs[0] == outputs[1]  # same message, same answer ...
    assert abs(targets[0] - targets[1]) >= 2 / q - 1e-12  # ... to different questions
    assert max(abs(o - t) for o, t in zip(outputs, targets)) >= 1 / q - 1e-12


@pytest.mark.slow
def test_measured_worst_error_matches_brute_force_over_b():
    q, key_dim, bits = 4, 24, 6
    measurement = measure_disjointness(q, key_dim, bits, seed=3)
    head = CertificateQSA.build(2 * q + 1, q, 1, 1 / (2 * q), key_dim, precision=None, seed=3)
    head.precision = bits
    worst = 0.0
    for a in all_bit_vectors(q):
        for b in all_bit_vectors(q):
            inputs = disjointness_instance(a, b)
            worst = max(worst, abs(head.predict(inputs)[0, 2 * q, 0] - check_instance(a, b)))
    # the measurement leaves out only the rounding of values and outputs
    assert measurement.worst_error == pytest.approx(worst, abs=2**-bits * 4)


def test_unknown_design_raises():
    with pytest.raises(ValueError, match="design"):
        measure_disjointness(4, 4, 1, design="magic")
