"""The size search every construction uses, and the verification record."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.constructions.verification import (
    ConstructionFailed,
    Verification,
    merge_scores,
    smallest_passing,
)


@given(threshold=st.integers(1, 5000), start=st.integers(1, 64))
def test_search_finds_the_exact_threshold_of_a_monotone_error(threshold, start):
    found, history = smallest_passing(
        lambda k: 0.0 if k >= threshold else 1.0, 0.5, start, limit=10_000
    )
    assert found == max(threshold, start)
    assert history[found] == 0.0
    assert found == start or history[found - 1] == 1.0
    assert len(history) <= 2 * (10_000).bit_length() + 2  # doubling then bisection


def test_search_raises_with_the_error_at_the_limit():
    with pytest.raises(ConstructionFailed, match="no size up to 40"):
        smallest_passing(lambda k: 1.0, 0.5, 3, limit=40)
    with pytest.raises(ValueError):
        smallest_passing(lambda k: 0.0, 0.5, 0, limit=4)


def test_verification_passes_on_threshold_or_bits_and_merges_scores():
    qsa = Verification(
        "qsa",
        {},
        0.25,
        {"max_error": 0.2, "mean_error": 0.1},
        {"max_error": 0.3, "mean_error": 0.2},
        2,
        1,
    )
    assert qsa.max_error == 0.3 and not qsa.passed and qsa.bit_errors is None
    match = Verification(
        "match2",
        {},
        0.5,
        {"max_error": 0.0, "bit_errors": 0.0},
        {"max_error": 0.0, "bit_errors": 0.0},
        2,
        2,
    )
    assert match.passed and match.bit_errors == 0
    merged = merge_scores(
        [
            {"max_error": 0.1, "bit_errors": 2.0, "bit_error_rate": 0.5},
            {"max_error": 0.4, "bit_errors": 1.0, "bit_error_rate": 0.0},
        ],
        [1, 3],
    )
    assert merged == {"max_error": 0.4, "bit_errors": 3.0, "bit_error_rate": 0.125}
