import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab import Oracle, OracleError
from attnlab.models import SingleHeadAttention
from attnlab.oracle.noise import (
    AdversarialNoise,
    BoundedNoise,
    GaussianNoise,
    RoundDigits,
    RoundFloat16,
    RoundFloat32,
    make_noise,
    noise_bound,
)

RNG = np.random.default_rng(0)
Y = RNG.standard_normal(4000) * 10.0 ** RNG.integers(-3, 4, size=4000)
X = np.zeros((4000, 1, 2))


@pytest.mark.parametrize(
    "noise",
    [BoundedNoise(1e-3), RoundDigits(4), RoundFloat32(), RoundFloat16(), AdversarialNoise(1e-3)],
)
def test_every_answer_stays_within_the_advertised_bound(noise):
    out = noise(Y, X, np.random.default_rng(1))
    assert np.all(
        np.abs(out - Y) <= noise.bound(Y) * (1 + 1e-12) + 1e-15 * np.abs(Y)
    )  # float subtraction
    assert np.any(out != Y)


def test_bounded_noise_is_random_and_fresh_on_every_answer():
    noise = BoundedNoise(0.5)
    rng = np.random.default_rng(3)
    a, b = noise(np.zeros(1000), X[:1000], rng), noise(np.zeros(1000), X[:1000], rng)
    assert noise.random and not np.array_equal(a, b)
    assert abs(np.std(a) - 0.5 / math.sqrt(3)) < 0.03  # uniform on [-tau, tau]


def test_gaussian_noise_has_the_stated_sigma_and_no_worst_case():
    noise = GaussianNoise(0.2)
    out = noise(np.zeros(20000), np.zeros((20000, 1, 1)), np.random.default_rng(4))
    assert noise.tau == math.inf and noise.random
    assert abs(np.std(out) - 0.2) < 0.01
    assert noise.scale(np.zeros(3)).tolist() == [0.2] * 3


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False), st.integers(1, 15))
@settings(max_examples=200, deadline=None)
def test_round_digits_keeps_k_significant_digits(value, digits):
    noise = RoundDigits(digits)
    out = float(noise(np.array([value]), None, None)[0])
    assert abs(out - value) <= noise.rel * abs(value) * (1 + 1e-9) + 1e-300
    assert out == float(f"{out:.{digits - 1}e}")


def test_float_rounding_matches_numpy_casts_and_repeats_identically():
    y = np.array([1 / 3, math.pi, -2.5e-7])
    np.testing.assert_array_equal(
        RoundFloat32()(y, None, None), y.astype(np.float32).astype(np.float64)
    )
    np.testing.assert_array_equal(
        RoundFloat16()(y, None, None), y.astype(np.float16).astype(np.float64)
    )
    assert not RoundFloat32().random and not RoundDigits(3).random


def test_float16_overflow_is_refused_by_the_oracle():
    oracle = Oracle(lambda X: X.sum(axis=(1, 2)), d=1, noise=RoundFloat16())
    assert oracle(np.array([[1.0]])) == 1.0
    with pytest.raises(OracleError, match="not finite"):
        oracle(np.array([[1e6]]))


def test_adversary_pushes_the_two_token_attention_toward_saturation():
    head = SingleHeadAttention.random(6, seed=2)
    tau = 1e-3
    noise = AdversarialNoise(tau, target=head)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((200, 2, 6)) * 0.3
    clean = head(torch.as_tensor(X)).detach().numpy()
    noisy = noise(clean, X, rng)
    assert np.allclose(np.abs(noisy - clean), tau)
    v = head.v.detach().numpy()
    y1, y2 = X[:, 0] @ v, X[:, 1] @ v
    alpha, alpha_noisy = (clean - y2) / (y1 - y2), (noisy - y2) / (y1 - y2)
    assert np.all(np.abs(alpha_noisy - 0.5) > np.abs(alpha - 0.5))
    np.testing.assert_array_equal(noise(clean, X, rng), noisy)  # a repeat gets the same answer


def test_adversary_without_target_biases_every_answer_outward():
    y = np.array([-2.0, 0.5, 3.0])
    out = AdversarialNoise(0.25)(y, np.zeros((3, 2, 1)), None)
    np.testing.assert_array_equal(out, [-2.25, 0.75, 3.25])


def test_oracle_applies_noise_to_fresh_answers():
    head = SingleHeadAttention.random(4, seed=0)
    exact = Oracle(head)
    noisy = Oracle(head, noise=BoundedNoise(1e-2), seed=1)
    X = np.random.default_rng(0).standard_normal((50, 3, 4))
    diff = noisy(X) - exact(X)
    assert np.all(np.abs(diff) <= 1e-2) and np.std(diff) > 1e-3
    assert noisy.noise.tau == 1e-2


def test_make_noise_builds_each_kind_and_explains_missing_arguments():
    assert make_noise(None) is None and make_noise("none") is None
    assert isinstance(make_noise("bounded", tau=1e-3), BoundedNoise)
    assert isinstance(make_noise("adversarial", tau=1e-3), AdversarialNoise)
    assert make_noise("gaussian", tau=0.1).sigma == 0.1
    assert make_noise("digits", digits=5).digits == 5
    assert isinstance(make_noise("float32"), RoundFloat32) and isinstance(
        make_noise("float16"), RoundFloat16
    )
    with pytest.raises(ValueError, match="--tau"):
        make_noise("bounded")
    with pytest.raises(ValueError, match="--digits"):
        make_noise("digits")
    with pytest.raises(ValueError, match="unknown noise kind"):
        make_noise("pink")
    with pytest.raises(ValueError, match="tau must be"):
        BoundedNoise(-1.0)
    with pytest.raises(ValueError, match="digits must be"):
        RoundDigits(0)


def test_noise_bound_of_an_exact_oracle_is_zero():
    assert noise_bound(None, np.ones(3)).tolist() == [0, 0, 0]
