"""The residue-histogram layer: a standard one-head attention layer that solves Match3 on every
input, at any precision, checked against the task's own solver."""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest

from attnlab.constructions.communication import run_layer
from attnlab.constructions.match3_histogram import histogram_layer, verify_histogram
from attnlab.tasks import get_task


@pytest.mark.parametrize(("N", "M", "precision"), [(4, 5, None), (4, 5, 1), (3, 11, 2), (5, 7, 1)])
def test_no_wrong_bit_on_every_sequence(N, M, precision):
    result = verify_histogram(N, M, precision)
    assert result["exhaustive"] and result["sequences"] == M**N
    assert result["wrong_bits"] == 0
    assert 0.05 < result["positive_rate"] < 0.99  # both answers occur


def test_no_wrong_bit_on_sampled_and_near_miss_sequences_at_the_training_grids_size():
    result = verify_histogram(8, 37, precision=1, samples=1024, seed=3)
    assert not result["exhaustive"] and result["sequences"] == 2048
    assert result["wrong_bits"] == 0
    assert 0.2 < result["positive_rate"] < 0.8


def test_the_check_catches_a_layer_built_for_another_modulus():
    """The layer for M = 6 judged as Match3 mod 5 on every sequence: the check must see wrong bits
    (so 0 above is a measurement, not a property of the checker)."""
    x = np.array(list(product(range(5), repeat=4)), dtype=np.int64)
    bits = run_layer(histogram_layer(4, 6), x)
    truth = get_task("match3", N=4, M=5).solve({"x": x})
    assert (bits.astype(np.int8) != truth).sum() > 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="N >= 1 and M >= 2"):
        histogram_layer(4, 1)
