"""Report wording: ranges without '65x to 65x', shares without a false '100%', word-boundary cuts."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from attnlab.report.text import human_header, number, share, shorten, span


def test_span_collapses_a_range_that_prints_as_one_value():
    assert span([65.2, 64.9], "{:.0f}".format, "x") == "65x"
    assert span([3.0, 65.0], "{:.0f}".format, "x") == "3x to 65x"
    assert span([7]) == "7"
    with pytest.raises(ValueError, match="at least one value"):
        span([])


def test_share_says_all_or_none_only_when_exact():
    assert share(100_000, 100_000) == "100%"
    assert share(99_999, 100_000) == ">99.9%"
    assert share(99_999, 100_000, digits=2) == ">99.99%"
    assert share(0, 7) == "0%"
    assert share(1, 100_000) == "<0.1%"
    assert share(1, 3) == "33.3%"
    # fractions too (the grid report's attention mass): 0.9996 is not all of it
    assert share(0.9996, 1.0) == ">99.9%"
    assert share(0.996, 1.0) == "99.6%"
    with pytest.raises(ValueError, match="positive whole"):
        share(0, 0)
    with pytest.raises(ValueError, match="part <= whole"):
        share(4, 3)


@given(st.integers(1, 10**7).flatmap(lambda w: st.tuples(st.integers(0, w), st.just(w))))
def test_share_never_rounds_to_the_ends(pair):
    part, whole = pair
    text = share(part, whole)
    assert (text == "100%") == (part == whole)
    assert (text == "0%") == (part == 0)


def test_shorten_cuts_at_a_word_boundary():
    text = "One unit of width 3, psi reading only the attention output: 0 wrong bits"
    assert shorten(text, 200) == text
    cut = shorten(text, 30)
    assert cut == "One unit of width 3, psi…" and len(cut) <= 30
    assert shorten("a" * 50, 10) == "a" * 9 + "…"  # one word longer than the room
    assert shorten("first line\nsecond line", 40) == "first line"
    assert shorten("", 10) == ""
    with pytest.raises(ValueError, match="width >= 2"):
        shorten("x", 1)


@given(st.text(alphabet="ab ,.", min_size=0, max_size=120), st.integers(2, 60))
def test_shorten_never_splits_a_word_it_keeps(text, width):
    cut = shorten(text, width)
    assert len(cut) <= width
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    if cut.endswith("…") and " " in cut:
        kept = cut[:-1]
        assert line.startswith(kept) and line[len(kept)] in " ,"


def test_headers_read_as_words():
    assert human_header("rel error W") == "relative error of W"
    assert human_header("ok") == "within bound"
    assert human_header("d^2+d") == "d² + d (Thm 4.1)"
    assert human_header("param rel_error_rows") == "relative error of parameter rows"
    assert human_header("N") == "N"
    assert human_header("neurons_found") == "neurons found"


def test_cells_print_as_people_read_them():
    assert number(True) == "yes" and number(False) == "no"
    assert number(float("nan")) == "n/a" and number(None) == "n/a"
    assert number(0.0) == "0" and number(1.5e-12) == "1.50e-12" and number(0.25) == "0.25"
    assert number(float("inf")) == "∞"
