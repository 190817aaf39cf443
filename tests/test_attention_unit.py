"""The attention unit: exact softmax(QK^T)V, stable at huge temperatures, p-bit rounding, heads."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.models import AttentionUnit, MultiHeadAttentionLayer, is_representable, stable_softmax


def reference(E: np.ndarray, Wq, Wk, Wv) -> np.ndarray:
    logits = np.einsum("bnd,md->bnm", E, Wq)
    keys = np.einsum("bnd,md->bnm", E, Wk)
    values = np.einsum("bnd,md->bnm", E, Wv)
    scores = logits @ keys.transpose(0, 2, 1)
    scores -= scores.max(axis=-1, keepdims=True)
    weights = np.exp(scores)
    weights /= weights.sum(axis=-1, keepdims=True)
    return weights @ values


def linear_unit(Wq, Wk, Wv, **kwargs) -> AttentionUnit:
    maps = [lambda E, W=torch.from_numpy(W): E @ W.T for W in (Wq, Wk, Wv)]
    return AttentionUnit(*maps, **kwargs)


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    B=st.integers(1, 3),
    N=st.integers(1, 9),
    m_in=st.integers(1, 5),
    m=st.integers(1, 5),
    chunk=st.integers(1, 4),
)
def test_unit_equals_softmax_qk_v(seed, B, N, m_in, m, chunk):
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((B, N, m_in))
    Wq, Wk, Wv = (rng.standard_normal((m, m_in)) for _ in range(3))
    out = linear_unit(Wq, Wk, Wv, query_chunk=chunk)(torch.from_numpy(E)).numpy()
    np.testing.assert_allclose(out, reference(E, Wq, Wk, Wv), rtol=1e-12, atol=1e-12)


def test_weights_are_rows_of_a_stochastic_matrix_even_at_huge_temperature():
    logits = torch.tensor([[1e8, 1e8 - 1.0, -1e8], [-5e307, 0.0, 5e307]], dtype=torch.float64)
    weights = stable_softmax(logits)
    assert torch.isfinite(weights).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, dtype=torch.float64))
    assert weights[0, 0] / weights[0, 1] == pytest.approx(np.e)
    assert weights[1, 2] == 1.0


@pytest.mark.parametrize("bits", [1, 3, 8, 20])
def test_precision_rounds_queries_keys_values_and_output(bits):
    rng = np.random.default_rng(bits)
    E = torch.from_numpy(rng.standard_normal((2, 5, 3)))
    Wq, Wk, Wv = (rng.standard_normal((4, 3)) for _ in range(3))
    unit = linear_unit(Wq, Wk, Wv, precision=bits)
    for produced in (*unit.projections(E), unit(E)):
        assert is_representable(produced, bits).all()
    exact = linear_unit(Wq, Wk, Wv)(E)
    assert not torch.equal(exact, unit(E))  # rounding changed something
    if bits >= 20:
        torch.testing.assert_close(unit(E), exact, rtol=1e-4, atol=1e-4)


def test_layer_sums_heads_and_readout_sees_the_token():
    rng = np.random.default_rng(0)
    X = torch.from_numpy(rng.standard_normal((2, 6, 3)))
    heads = [linear_unit(*(rng.standard_normal((3, 3)) for _ in range(3))) for _ in range(2)]
    layer = MultiHeadAttentionLayer(
        heads, output_map=lambda attended, tokens: attended + 10 * tokens
    )
    torch.testing.assert_close(layer(X), heads[0](X) + heads[1](X) + 10 * X)


def test_trainable_layer_learns_a_fixed_batch():
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.standard_normal((8, 5, 3)))
    target = X.mean(dim=1, keepdim=True).expand(-1, 5, -1)  # averaging: attention's home ground
    layer = MultiHeadAttentionLayer.trainable(d_in=3, m=8, d_out=3, heads=2, seed=rng)
    optimiser = torch.optim.Adam(layer.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        optimiser.zero_grad()
        loss = ((layer(X) - target) ** 2).mean()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert all(p.grad is not None for p in layer.parameters())
    assert losses[-1] < 0.3 * losses[0]


def test_bad_configurations_raise_with_a_reason():
    identity = lambda E: E  # noqa: E731
    with pytest.raises(ValueError, match="precision"):
        AttentionUnit(identity, identity, identity, precision=0)
    with pytest.raises(ValueError, match="precision"):
        MultiHeadAttentionLayer(
            [AttentionUnit(identity, identity, identity, precision=8)], precision=4
        )
    with pytest.raises(ValueError, match="at least one head"):
        MultiHeadAttentionLayer([])
    with pytest.raises(ValueError, match="shape"):
        AttentionUnit(identity, identity, identity)(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="same dimension"):
        AttentionUnit(identity, lambda E: E[..., :1], identity)(torch.zeros(1, 4, 3))


def test_trainable_layers_are_reproducible_and_leave_torch_global_state_alone():
    state = torch.get_rng_state()
    first = MultiHeadAttentionLayer.trainable(3, 4, 2, heads=2, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    second = MultiHeadAttentionLayer.trainable(3, 4, 2, heads=2, seed=7)
    X = torch.randn(2, 5, 3, dtype=torch.float64)
    torch.testing.assert_close(first(X), second(X))
    assert not torch.equal(first(X), MultiHeadAttentionLayer.trainable(3, 4, 2, heads=2, seed=8)(X))
