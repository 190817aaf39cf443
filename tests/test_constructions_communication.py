"""The communication instances behind Theorems 4 and 7, on every input pair at tiny sizes."""

import numpy as np
import pytest

from attnlab.constructions.communication import (
    check_match3_reduction,
    disjointness_rows,
    exhaustive_layer_errors,
    indicator_layer,
    layer_messages,
    match3_instance,
    witness_failure,
)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_one_way_disjointness_needs_n_bits_for_any_protocol(n):
    rows = disjointness_rows(n)
    assert rows["distinct_rows"] == 2**n and rows["one_way_bits_needed"] == n
    assert rows["fooling_set_ok"]


@pytest.mark.parametrize("n", [2, 3, 4])
def test_match3_at_the_query_token_is_set_disjointness_on_every_pair(n):
    instance = match3_instance(n)
    assert check_match3_reduction(instance)["reduction_exact"]
    assert instance.N == 2 * n + 1


def test_a_layer_at_n_bits_solves_every_pair_and_every_narrower_one_fails_on_a_witness():
    n = 4
    instance = match3_instance(n)
    full = indicator_layer(instance, precision=8)
    assert exhaustive_layer_errors(full, instance) == 0
    assert len(np.unique(layer_messages(full, instance, precision=1), axis=0)) == 2**n
    for width in range(1, n):
        narrow = indicator_layer(instance, width)
        witness = witness_failure(narrow, instance)
        assert witness is not None and witness["wrong"]
        assert witness["layer_bits"][0] == witness["layer_bits"][1]  # same message, same output
        assert witness["true_bits"][0] != witness["true_bits"][1]
        assert exhaustive_layer_errors(narrow, instance) > 0


def test_sizes_beyond_the_enumeration_are_refused():
    with pytest.raises(ValueError, match="exhaustive"):
        disjointness_rows(11)
