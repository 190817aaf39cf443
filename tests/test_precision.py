import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attnlab.models.precision import is_representable, round_to_bits

FAST = settings(max_examples=60, deadline=None)
# normal float64 magnitudes, where the relative error bound holds exactly
normal_floats = st.floats(min_value=-1e300, max_value=1e300, allow_nan=False).filter(
    lambda v: v == 0 or abs(v) > 1e-300
)
bits = st.integers(1, 60)


@FAST
@given(arrays(np.float64, st.integers(1, 20), elements=normal_floats), bits)
def test_relative_error_is_at_most_two_to_the_minus_p(x, p):
    rounded = round_to_bits(x, p)
    assert rounded.dtype == np.float64 and rounded.shape == x.shape
    assert np.all(np.abs(rounded - x) <= 2.0**-p * np.abs(x))


@FAST
@given(arrays(np.float64, st.integers(1, 20), elements=normal_floats), bits)
def test_rounding_is_idempotent_and_leaves_p_significant_bits(x, p):
    rounded = round_to_bits(x, p)
    np.testing.assert_array_equal(round_to_bits(rounded, p), rounded)
    assert np.all(is_representable(rounded, p))
    mantissa, _ = np.frexp(rounded)
    scaled = np.ldexp(mantissa, p)  # an integer below 2^p in magnitude when p bits suffice
    np.testing.assert_array_equal(scaled, np.round(scaled))
    assert np.all(np.abs(scaled) <= 2.0**p)


@FAST
@given(st.integers(1, 40), st.integers(-200, 200), bits)
def test_representable_values_are_unchanged(k_bits, exponent, p):
    k = (1 << min(k_bits, p)) - 1  # an odd integer with min(k_bits, p) <= p bits
    value = np.ldexp(float(k), exponent)
    assert round_to_bits(value, p) == value
    assert round_to_bits(-value, p) == -value
    assert is_representable(value, p)


@FAST
@given(normal_floats, normal_floats, st.integers(1, 30))
def test_rounding_is_monotone_and_odd(a, b, p):
    lo, hi = min(a, b), max(a, b)
    assert round_to_bits(lo, p) <= round_to_bits(hi, p)
    assert round_to_bits(-a, p) == -round_to_bits(a, p)


def test_known_values_round_half_to_even():
    x = np.array([1.0, 1.25, 1.75, 0.1, -3.7, 5.0, 7.0])
    np.testing.assert_array_equal(round_to_bits(x, 2), [1.0, 1.0, 2.0, 0.09375, -4.0, 4.0, 8.0])
    assert round_to_bits(0.1, 3) == 0.09375
    assert not is_representable(0.1, 20)


def test_special_values_and_exact_modes():
    x = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 0.1])
    out = round_to_bits(x, 4)
    np.testing.assert_array_equal(out[:4], x[:4])
    assert np.isnan(out[4])
    assert round_to_bits(x, None) is x
    np.testing.assert_array_equal(round_to_bits(x[5:], 53), x[5:])
    np.testing.assert_array_equal(round_to_bits(np.arange(6), 2), [0.0, 1.0, 2.0, 3.0, 4.0, 4.0])


@FAST
@given(arrays(np.float64, st.integers(1, 20), elements=normal_floats), st.integers(1, 52))
def test_torch_and_numpy_agree(x, p):
    np.testing.assert_array_equal(round_to_bits(torch.as_tensor(x), p).numpy(), round_to_bits(x, p))


def test_float32_tensors_keep_their_dtype_and_round_within_bound():
    x = torch.linspace(-5, 5, 101, dtype=torch.float32)
    out = round_to_bits(x, 5)
    assert out.dtype == torch.float32
    assert torch.all((out - x).abs() <= 2.0**-5 * x.abs())
    assert torch.equal(round_to_bits(x, 24), x)


def test_gradient_passes_straight_through():
    x = torch.tensor([0.3, -1.7, 2.2], dtype=torch.float64, requires_grad=True)
    y = round_to_bits(x, 3)
    torch.testing.assert_close(y.detach(), torch.as_tensor(round_to_bits(x.detach().numpy(), 3)))
    (y * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "p, error", [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_invalid_precision_raises(p, error):
    with pytest.raises(error, match="precision p"):
        round_to_bits(np.ones(3), p)


@pytest.mark.parametrize("p", [1, 2, 10])
def test_rounding_past_the_float64_range_raises_instead_of_returning_inf(p):
    # 1.5 * 2^1023 (printed 1.348e308) rounds, ties to even, up to 2^1024 at one bit: not a
    # float64, so no value keeps the 2^-p bound
    huge = np.array([1.5 * 2.0**1023 if p == 1 else np.finfo(np.float64).max])
    with pytest.raises(OverflowError, match="float64 range"):
        round_to_bits(huge, p)
    with pytest.raises(OverflowError, match="float64 range"):
        round_to_bits(torch.from_numpy(huge), p)
    with pytest.raises(ValueError):  # also a ValueError, so the CLI reports it cleanly
        round_to_bits(float(huge[0]), p)


def test_infinities_given_as_input_still_pass_through():
    x = np.array([np.inf, -np.inf, 1.5])
    np.testing.assert_array_equal(round_to_bits(x, 1), np.array([np.inf, -np.inf, 2.0]))
