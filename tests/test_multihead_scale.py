"""multi_head on W of any size: the box read rescaled, f(sX) = (s^2 W, s u, s v, c).

Before, W of entries ~100 or ~1e-4 made the learner give up ("no usable probe direction", "could
not find a well-conditioned first probe pair"), and ~1e-6 came back 1e-8-3e-8 off without a word.
"""

from __future__ import annotations

import numpy as np
import pytest

from attnlab import Oracle
from attnlab.extract import multi_head
from attnlab.extract.multihead.token_scale import token_scale
from attnlab.models import MultiHeadRegressor
from attnlab.models.canonical import MultiHeadParams, canonical_error


def error_of(result, model) -> float:
    return canonical_error(MultiHeadParams(result.W, result.v), MultiHeadParams.from_model(model))


@pytest.mark.parametrize("scale", [1e-6, 1e-4, 100.0, 1e4])
@pytest.mark.parametrize("heads, d, seed", [(3, 8, 0), (2, 16, 1), (1, 16, 3), (4, 8, 3)])
def test_heads_of_any_size_are_recovered(scale, heads, d, seed):
    """Each of these (H, d, seed) gave up or came back inexact at some scale before."""
    model = MultiHeadRegressor.random(d, heads, scale=scale, seed=seed)
    oracle = Oracle(model, d=d)
    result = multi_head(oracle, heads=heads, fidelity_samples=0, seed=seed)
    assert error_of(result, model) <= 1e-8
    assert result.queries == oracle.queries  # every query, the rescaled reads' too
    if "token_scale" in result.info:
        # the rescaled box's W is of about unit size
        s = result.info["token_scale"]
        rms = float(np.sqrt(np.mean(result.W**2)))
        assert 0.05 <= s**2 * rms <= 20.0
        assert result.info["token_scale_queries"] <= result.queries


def test_unit_size_heads_are_read_as_before():
    """No rescaling (and no extra query) where the learner's own token lengths work."""
    for heads, d, seed in [(2, 4, 0), (3, 8, 1), (4, 16, 2)]:
        model = MultiHeadRegressor.random(d, heads, seed=seed)
        result = multi_head(Oracle(model, d=d), heads=heads, fidelity_samples=0, seed=seed)
        assert "token_scale" not in result.info
        assert error_of(result, model) <= 1e-8


def test_token_scale_moves_exactly_with_the_size_of_w():
    """W times 1e-4 needs tokens 100x longer: on the same pairs (same rng) the estimate moves by
    exactly that factor, the crossing shifting by four grid points."""
    d, heads = 8, 3
    base = MultiHeadRegressor.random(d, heads, seed=5)
    small = MultiHeadRegressor.random(d, heads, scale=1e-4, seed=5)
    s_base = token_scale(Oracle(base, d=d), d, np.random.default_rng(0))
    s_small = token_scale(Oracle(small, d=d), d, np.random.default_rng(0))
    assert s_base is not None and 1 / 3 <= s_base <= 3
    assert s_small == pytest.approx(100.0 * s_base, rel=1e-6)


def test_token_scale_is_none_without_heads():
    d = 6
    zero = Oracle(lambda X: np.asarray(X)[:, :, 0].sum(axis=1) * 0.0 + 1.0, d=d)
    assert token_scale(zero, d, np.random.default_rng(0)) is None
