"""Matrix-free nuclear-norm recovery (Theorem 5.1's program): exact, to the noise level, bounded memory."""

import tracemalloc

import numpy as np
import pytest

from attnlab.extract.noisy_nuclear import RankOneMeasurements, _polish, nuclear_norm_solve


def _problem(d, r, C, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, r)) @ rng.standard_normal((r, d)) / np.sqrt(r * d)
    m = int(C * r * 2 * d)
    a = rng.standard_normal((m, d)) / np.sqrt(d)
    b = rng.standard_normal((m, d)) / np.sqrt(d)
    return W, a, b, np.einsum("kd,de,ke->k", a, W, b), rng


def test_operator_adjoint_matches_inner_products():
    W, a, b, y, rng = _problem(9, 2, 3)
    op = RankOneMeasurements(a, b, rng.uniform(0.5, 2.0, len(y)))
    X, z = rng.standard_normal((9, 9)), rng.standard_normal(len(y))
    assert np.isclose(op.apply(X) @ z, np.sum(X * op.adjoint(z)))
    L, R = rng.standard_normal((9, 3)), rng.standard_normal((9, 3))
    assert np.allclose(op.apply_factors(L, R), op.apply(L @ R.T))
    assert np.allclose(op.adjoint_right(z, R), op.adjoint(z) @ R)
    assert np.allclose(op.adjoint_left(z, L), op.adjoint(z).T @ L)


@pytest.mark.parametrize("d, r", [(20, 1), (40, 2), (30, 4)])
def test_exact_measurements_recover_low_rank_w_to_float64(d, r):
    W, a, b, y, _ = _problem(d, r, 1.5, seed=d + r)
    W_hat, report = nuclear_norm_solve(a, b, y)
    assert report.rank == r
    assert np.linalg.norm(W_hat - W) <= 1e-10 * np.linalg.norm(W)


@pytest.mark.parametrize("sigma", [1e-6, 1e-3])
def test_noisy_measurements_recover_w_to_the_noise_level(sigma):
    # The reference is the weighted rank-r least-squares fit started at the truth (what an
    # estimator that knew the rank and had a perfect optimiser would return).
    d, r = 40, 2
    W, a, b, y, rng = _problem(d, r, 3, seed=7)
    y_noisy = y + sigma * rng.standard_normal(len(y))
    weights = np.full(len(y), 1.0 / sigma)
    W_hat, report = nuclear_norm_solve(a, b, y_noisy, weights=weights, noisy=True)
    assert report.rank == r  # the chi-squared test drops the noise components
    reference, _, _ = _polish(
        RankOneMeasurements(a, b, weights), W, y_noisy * weights, r, noisy=True
    )
    error, floor = np.linalg.norm(W_hat - W), np.linalg.norm(reference - W)
    assert error <= 1.2 * floor
    assert error <= 1e3 * sigma * np.linalg.norm(W)  # and the noise level is small here


def test_refuses_bad_input():
    W, a, b, y, _ = _problem(6, 1, 3)
    with pytest.raises(ValueError, match="same shape"):
        nuclear_norm_solve(a, b[:, :5], y)
    with pytest.raises(ValueError, match="finite"):
        nuclear_norm_solve(a, b, np.full_like(y, np.nan))
    with pytest.raises(ValueError, match="rank"):
        nuclear_norm_solve(a, b, y, rank=7)


@pytest.mark.slow
def test_memory_stays_linear_in_m_at_d_128():
    # m = 4096 measurements: an m x m Gram matrix alone would be 134 MB; the probes are 8.4 MB.
    d, r = 128, 8
    W, a, b, y, _ = _problem(d, r, 2, seed=3)
    m = len(y)
    bound = 10 * (m * d + d * d) * 8  # ten probe-sized arrays: 43 MB
    assert m * m * 8 > 3 * bound
    tracemalloc.start()
    try:
        W_hat, report = nuclear_norm_solve(a, b, y)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound, f"peak {peak / 1e6:.1f} MB >= {bound / 1e6:.1f} MB"
    assert report.rank == r and np.linalg.norm(W_hat - W) <= 1e-10 * np.linalg.norm(W)
