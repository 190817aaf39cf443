"""The fidelity check never loses a finished extraction (issue 10)."""

import warnings

import numpy as np
import pytest

from attnlab.extract import single_head
from attnlab.extract.convention import token_width
from attnlab.extract.result import INFO_KEYS, FidelityUnchecked
from attnlab.oracle import Oracle


def _cases():
    from attnlab.extract.ffn import relu_ffn
    from attnlab.extract.multihead import multi_head
    from attnlab.models.attention import SingleHeadAttention
    from attnlab.models.ffn import ReluFFN
    from attnlab.models.multihead import MultiHeadRegressor

    return [
        ("single_head", lambda: SingleHeadAttention.random(d=4, seed=0), single_head, {}),
        (
            "multi_head",
            lambda: MultiHeadRegressor.random(d=4, heads=2, seed=0),
            multi_head,
            {"heads": 2},
        ),
        ("relu_ffn", lambda: ReluFFN.random(d=3, m=4, seed=0), relu_ffn, {}),
    ]


@pytest.mark.parametrize("name", ["single_head", "multi_head", "relu_ffn"])
def test_budget_for_the_extraction_only_keeps_the_result(name):
    _, make, extractor, options = next(c for c in _cases() if c[0] == name)
    free = extractor(Oracle(make()), **options, fidelity_samples=0)
    cost = free.queries
    oracle = Oracle(make(), budget=cost)
    with pytest.warns(FidelityUnchecked):
        result = extractor(oracle, **options, fidelity_samples=200)
    assert result.fidelity is None
    assert "fidelity_skipped" in result.info and "fidelity_skipped" in INFO_KEYS
    assert result.queries == cost
    for key, value in free.params.items():
        np.testing.assert_allclose(result.params[key], value)


def test_fidelity_spends_what_is_left():
    from attnlab.models.attention import SingleHeadAttention

    cost = single_head(Oracle(SingleHeadAttention.random(d=4, seed=0)), fidelity_samples=0).queries
    oracle = Oracle(SingleHeadAttention.random(d=4, seed=0), budget=cost + 7)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FidelityUnchecked)
        result = single_head(oracle, fidelity_samples=200)
    assert result.fidelity is not None and result.fidelity < 1e-8
    assert result.fidelity_queries <= 7 and "fidelity_note" in result.info
    assert oracle.remaining >= 0


def test_token_width_delegates_to_require_d():
    class NoWidth:
        d = None

        def require_d(self, who):
            raise ValueError(f"{who} needs the token width (from require_d)")

    with pytest.raises(ValueError, match="from require_d"):
        token_width(NoWidth())


def test_exact_extractor_warns_on_a_noisy_oracle():
    from attnlab.extract.convention import NoisyOracleWarning
    from attnlab.models.attention import SingleHeadAttention
    from attnlab.oracle.noise import GaussianNoise

    noisy = Oracle(SingleHeadAttention.random(d=4, seed=0), noise=GaussianNoise(1e-3))
    with pytest.warns(NoisyOracleWarning, match="noisy_single_head"):
        single_head(noisy, fidelity_samples=0)
    exact = Oracle(SingleHeadAttention.random(d=4, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", NoisyOracleWarning)
        single_head(exact, fidelity_samples=0)
