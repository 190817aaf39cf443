"""Theorem 2 with optimised certificates: the softmax-leak program against an adversary aimed at it."""

import numpy as np
import pytest
import torch

from attnlab.constructions.qsa_certificates import CertificateQSA, random_sign_keys
from attnlab.constructions.qsa_optimised import leak_certificates, least_squares_certificates
from attnlab.tasks import distinct_indices


def test_optimised_certificate_survives_an_adversary_aimed_at_it_where_least_squares_fails():
    # N = 256, q = 4, m' = 64 = 2 q log2 N, seed 0; each adversary attacks the program its head uses
    eps = 1 / 8
    optimised = CertificateQSA.build(256, 4, 2, eps, 64, seed=0, certificate="softmax-leak")
    baseline = CertificateQSA.build(256, 4, 2, eps, 64, seed=0, certificate="least-squares")
    against_optimised = optimised.adversarial_sets(np.random.default_rng(7), targets=32)
    against_baseline = baseline.adversarial_sets(np.random.default_rng(7), targets=32)
    assert optimised.worst_case_errors(against_optimised).max() <= eps
    assert baseline.worst_case_errors(against_baseline).max() > 1.0  # most of the mass off the set
    # and end to end through the attention unit, with the worst z for the worst set
    verification = optimised.verify(rng=3, n=1, adversarial_targets=16)
    assert verification.passed and verification.adversarial["max_error"] <= eps


def test_leak_certificate_is_exact_on_its_set_and_never_leaks_more_than_least_squares():
    N, q, key_dim, beta = 128, 3, 40, 12.0
    keys = torch.from_numpy(random_sign_keys(key_dim, N, 1))
    sets = torch.from_numpy(
        np.sort(distinct_indices(np.random.default_rng(2), (64,), q, N), axis=1)
    )
    optimised, baseline = (
        leak_certificates(keys, sets, beta),
        least_squares_certificates(keys, sets),
    )
    on_set = torch.gather(optimised @ keys, 1, sets)
    torch.testing.assert_close(on_set, torch.ones_like(on_set), rtol=0, atol=1e-9)

    def leak(w):
        scores = (w @ keys).scatter(1, sets, -torch.inf)
        return torch.logsumexp(beta * (scores - 1), dim=1)

    assert bool((leak(optimised) <= leak(baseline) + 1e-12).all())
    assert float((leak(baseline) - leak(optimised)).mean()) > 1.0  # and usually far less


def test_a_query_solved_alone_or_in_a_batch_gives_the_same_error_up_to_float_rounding():
    # No coupling in the program; only last-bit differences of batched products (which can move
    # the active-set boundary) separate the two, and the worst-case errors agree closely.
    head = CertificateQSA.build(60, 2, 2, 0.25, 30, seed=4)
    sets = np.sort(distinct_indices(np.random.default_rng(5), (20,), 2, 60), axis=1)
    alone = np.concatenate([head.worst_case_errors(sets[i : i + 1]) for i in range(4)])
    np.testing.assert_allclose(head.worst_case_errors(sets)[:4], alone, rtol=1e-3, atol=1e-9)


def test_unknown_certificate_is_rejected():
    with pytest.raises(ValueError, match="certificate must be one of"):
        CertificateQSA.build(32, 2, 2, 0.25, 16, certificate="magic")
