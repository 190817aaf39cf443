import json

import numpy as np
import pytest
import scipy.linalg
import torch

from attnlab import BudgetExhausted, ExtractionError, Oracle
from attnlab.evaluate import functional_error, relative_error
from attnlab.extract.transformer import one_layer_transformer
from attnlab.models import OneLayerTransformer, SingleHeadAttention
from attnlab.oracle.derived import antisymmetric_oracle
from attnlab.oracle.sampling import random_sequences


def _max_error_on_fresh_sequences(model, extraction, d, seed=5):
    seqs = random_sequences(np.random.default_rng(seed), d, 200, lengths=(1, 12), scale=2.0)
    return functional_error(model, extraction, [X[None] for X in seqs])


@pytest.mark.parametrize(
    "d, m", [(16, 32), (32, 64), pytest.param(64, 128, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("residual", [False, True])
def test_exact_extraction_with_stages(d, m, residual):
    model = OneLayerTransformer.random(d, m, residual=residual, seed=3)
    oracle = Oracle(model, d=d)
    ex = one_layer_transformer(oracle, residual=residual, hidden=m, seed=1)
    assert relative_error(ex.W, model.W.detach().numpy()) <= 1e-8
    assert relative_error(ex.v, model.value_vector.detach().numpy()) <= 1e-8
    assert _max_error_on_fresh_sequences(model, ex, d) <= 1e-8 and ex.fidelity <= 1e-8
    assert ex.queries == oracle.queries - ex.fidelity_queries == sum(ex.stages.values())
    assert ex.stages["attention"] == 2 * ex.info["derived_queries"] == 2 * (d * d + d)
    assert ex.info["ffn"]["neurons_found"] == m and ex.info["ffn"]["exact"]
    assert ex.dof == d * d + m * d + (d if ex.info["ffn"]["linear_term_kept"] else 0)
    json.dumps(ex.to_dict())  # results serialise


def test_convention_keyword_only_and_method_options():
    model = OneLayerTransformer.random(4, 5, seed=0)
    with pytest.raises(TypeError):
        one_layer_transformer(Oracle(model, d=4), True)
    with pytest.raises(ValueError, match="method_options are"):
        one_layer_transformer(Oracle(model, d=4), method_options={"bogus": 1})
    first = one_layer_transformer(Oracle(model, d=4), hidden=5, seed=0)
    again = one_layer_transformer(
        Oracle(model, d=4),
        hidden=5,
        method_options={"head_method": "adaptive"},
        seed=np.random.default_rng(0),
    )
    assert first.queries == again.queries and first.dof == again.dof is not None


def test_derived_oracle_costs_two_parent_queries_and_is_a_single_head():
    d = 5
    model = OneLayerTransformer.random(d, 7, seed=2)
    parent = Oracle(model, d=d, budget=40)
    derived = antisymmetric_oracle(parent)
    X = np.random.default_rng(0).standard_normal((6, 3, d))
    head = SingleHeadAttention(model.W.detach(), model.value_vector.detach())
    np.testing.assert_allclose(
        derived(X), head(torch.as_tensor(X)).detach().numpy(), rtol=1e-12, atol=1e-12
    )
    assert derived.queries == 6 and parent.queries == 12
    with pytest.raises(BudgetExhausted):
        derived(
            np.random.default_rng(1).standard_normal((15, 2, d))
        )  # 30 more pass the budget of 40


def test_a_zero_value_vector_is_reported_not_guessed():
    d, m = 4, 6
    rng = np.random.default_rng(0)
    A = rng.standard_normal((d, m))
    w_o = scipy.linalg.null_space(A)[:, 0]  # A w_o = 0, yet the FFN is not zero
    model = OneLayerTransformer(0.3 * rng.standard_normal((d, d)), A, w_o)
    with pytest.raises(ExtractionError, match="A w_o = 0"):
        one_layer_transformer(Oracle(model, d=d), seed=0)


def test_transformer_module_shapes_and_residual():
    model = OneLayerTransformer.random(3, 4, residual=True, seed=0)
    X = torch.randn(2, 5, 3, dtype=torch.float64)
    z = model.mixed(X)
    assert z.shape == (2, 3) and model(X).shape == (2,)
    one = X[:, :1, :]
    torch.testing.assert_close(model.mixed(one), 2 * one[:, 0, :])
    with pytest.raises(ValueError, match="must be"):
        OneLayerTransformer(np.zeros((2, 2)), np.zeros((3, 4)), np.zeros(4))
