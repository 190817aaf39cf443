"""Match constructions: Match2 (one unit), Match3 (third-order), local Match3 (one standard head)."""

from itertools import product

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.constructions import (
    LocalMatch3,
    Match2Construction,
    ThirdOrderMatch3,
    smallest_local_match3,
    smallest_match_precision,
)
from attnlab.constructions.match2 import Match2WidthThree
from attnlab.constructions.match_common import near_miss_inputs
from attnlab.tasks import get_task


def every_input(N: int, M: int) -> dict:
    return {"x": np.array(list(product(range(M), repeat=N)), dtype=np.int64)}


@pytest.mark.parametrize("N,M", [(3, 2), (3, 5), (4, 6)])
def test_match2_is_right_on_every_input_of_a_small_size(N, M):
    construction = Match2Construction.build(N, M)
    inputs = every_input(N, M)
    np.testing.assert_array_equal(
        construction.predict(inputs), get_task("match2", N=N, M=M).solve(inputs)
    )


@pytest.mark.parametrize("N,M", [(3, 5), (4, 4)])
def test_third_order_match3_is_right_on_every_input_of_a_small_size(N, M):
    construction = ThirdOrderMatch3.build(N, M)
    inputs = every_input(N, M)
    np.testing.assert_array_equal(
        construction.predict(inputs), get_task("match3", N=N, M=M).solve(inputs)
    )


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31), N=st.integers(2, 48), M=st.integers(2, 400))
def test_match2_has_no_wrong_bit_on_sampled_and_near_miss_inputs(seed, N, M):
    verification = Match2Construction.build(N, M).verify(rng=seed, n=8)
    assert verification.bit_errors == 0 and verification.passed


def test_third_order_match3_verifies_at_float64_and_at_its_searched_precision():
    assert ThirdOrderMatch3.build(20, 101).verify(rng=1, n=6).passed
    found = smallest_match_precision(lambda bits: ThirdOrderMatch3.build(20, 101, bits), n=4)
    assert found.search[found.precision] == 0
    assert found.search[found.precision - 1] > 0  # one bit fewer already makes mistakes
    assert found.m == 4 and found.heads == 1


def test_match2_precision_search_and_too_few_bits_fail():
    found = smallest_match_precision(lambda bits: Match2Construction.build(40, 97, bits), n=8)
    assert found.verify(rng=3, n=8).passed
    assert Match2Construction.build(40, 97, precision=3).verify(rng=0, n=8).bit_errors > 0


def test_near_miss_inputs_sit_next_to_a_match():
    x = near_miss_inputs(np.random.default_rng(0), 6, 10, 50, order=2)
    assert set(((x[:, 0:1] + x[:, 1:]) % 50).ravel()) <= {0, 1, 49}
    assert (
        ((x[1::2, 0:1] + x[1::2, 1:]) % 50 == 0).any(axis=1).all()
    )  # odd rows plant one exact partner


def test_local_match3_is_certified_on_every_window_and_right_on_every_small_input():
    construction = smallest_local_match3(N=5, M=3, window=1)
    assert construction.certified()
    inputs = every_input(5, 3)
    task = get_task("match3-local", N=5, M=3, window=1)
    np.testing.assert_array_equal(construction.predict(inputs), task.solve(inputs))
    assert construction.m == 2 + 2 * 3


def test_local_match3_verifies_on_a_longer_sequence_and_too_few_bits_do_not_certify():
    construction = smallest_local_match3(N=40, M=29, window=2)
    verification = construction.verify(rng=2, n=6)
    assert verification.passed and verification.notes["certified_all_inputs"]
    if construction.precision is not None:
        assert (
            construction.search[construction.precision - 1]
            > construction.search[construction.precision]
        )
    coarse = LocalMatch3.build(40, 29, 2, precision=3)
    assert not coarse.certified()


def test_bad_parameters_and_mismatched_tasks_raise():
    with pytest.raises(ValueError, match="M must be"):
        Match2Construction.build(8, 1)
    with pytest.raises(ValueError, match="construction is for"):
        Match2Construction.build(8, 5).verify(get_task("match2", N=8, M=7))
    with pytest.raises(ValueError, match="construction is for"):
        ThirdOrderMatch3.build(8, 5).verify(get_task("match2", N=8, M=5))


def test_match2_width_three_without_residual_is_right_on_every_input_at_N4_M5():
    construction = Match2WidthThree.build(4, 5)
    inputs = every_input(4, 5)
    wrong = construction.predict(inputs) != get_task("match2", N=4, M=5).solve(inputs)
    assert int(wrong.sum()) == 0
    described = construction.to_dict()
    assert (
        described["m"] == 3
        and described["residual"] is False
        and described["m_including_residual"] == 3
    )


@pytest.mark.parametrize("N,M", [(3, 6), (5, 7), (4, 8)])
def test_match2_width_three_on_every_input_of_other_small_sizes(N, M):
    construction = Match2WidthThree.build(N, M)
    inputs = every_input(N, M)
    np.testing.assert_array_equal(
        construction.predict(inputs), get_task("match2", N=N, M=M).solve(inputs)
    )


def test_match2_width_three_precision_search_and_the_residual_variant_counted_honestly():
    found = smallest_match_precision(lambda bits: Match2WidthThree.build(64, 97, bits), n=8)
    assert found.verify(rng=4, n=8).passed
    assert found.search[found.precision - 1] > 0
    residual = Match2Construction.build(16, 11).to_dict()
    assert (
        residual["m"] == 2
        and residual["residual"] is True
        and residual["m_including_residual"] == 3
    )


def test_local_match3_width_does_not_grow_with_N():
    short, long = smallest_local_match3(32, 97, 2), smallest_local_match3(128, 97, 2)
    assert short.m == long.m == 2 + 2 * 5
    assert short.certified() and long.certified()
    assert long.verify(rng=0, n=4).passed
