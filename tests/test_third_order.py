import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from attnlab.models.precision import is_representable, round_to_bits
from attnlab.models.third_order import (
    DEFAULT_BLOCK_ELEMENTS,
    ThirdOrderAttention,
    block_sizes,
    third_order_attention,
    third_order_attention_naive,
)
from attnlab.tasks import get_task

FAST = settings(max_examples=30, deadline=None)


def random_inputs(seed, lead, N, m, m_v, logit_scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    Q, K1, K2 = (torch.randn(*lead, N, m, generator=gen, dtype=torch.float64) for _ in range(3))
    V1, V2 = (torch.randn(*lead, N, m_v, generator=gen, dtype=torch.float64) for _ in range(2))
    return Q * logit_scale, K1, K2, V1, V2


def loop_reference(Q, K1, K2, V1, V2):
    """The definition, one query and one pair at a time, in numpy (no shared code with the module)."""
    Q, K1, K2, V1, V2 = (t.numpy() for t in (Q, K1, K2, V1, V2))
    B, N, _ = Q.shape
    out = np.zeros((B, N, V1.shape[-1]))
    for b in range(B):
        for i in range(N):
            logits = np.array(
                [[Q[b, i] @ (K1[b, j] * K2[b, k]) for k in range(N)] for j in range(N)]
            )
            w = np.exp(logits - logits.max())
            w /= w.sum()
            out[b, i] = sum(w[j, k] * V1[b, j] * V2[b, k] for j in range(N) for k in range(N))
    return out


def test_naive_einsum_matches_the_definition_loop():
    inputs = random_inputs(0, (2,), 5, 3, 2)
    np.testing.assert_allclose(
        third_order_attention_naive(*inputs).numpy(), loop_reference(*inputs), rtol=0, atol=1e-13
    )


@FAST
@given(
    seed=st.integers(0, 10**6),
    lead=st.sampled_from([(1,), (3,), (2, 2)]),
    N=st.integers(1, 10),
    m=st.integers(1, 5),
    m_v=st.integers(1, 4),
    chunk=st.one_of(st.none(), st.integers(1, 11)),
    key_chunk=st.one_of(st.none(), st.integers(1, 11)),
    scale=st.sampled_from([0.1, 1.0, 8.0]),
)
def test_chunked_equals_naive_for_any_blocking(seed, lead, N, m, m_v, chunk, key_chunk, scale):
    inputs = random_inputs(seed, lead, N, m, m_v, scale)
    out = third_order_attention(*inputs, chunk=chunk, key_chunk=key_chunk)
    assert out.shape == (*lead, N, m_v) and out.dtype == torch.float64
    ref = third_order_attention_naive(*inputs)
    assert torch.max(torch.abs(out - ref)).item() <= 1e-12 * max(
        1.0, torch.max(torch.abs(ref)).item()
    )


def test_memory_budget_forces_many_blocks_and_still_matches():
    inputs = random_inputs(3, (2,), 12, 4, 3, 3.0)
    assert block_sizes(2, 12, max_elements=50) == (1, 2)
    out = third_order_attention(*inputs, max_elements=50)
    torch.testing.assert_close(out, third_order_attention_naive(*inputs), rtol=0, atol=1e-12)


def test_block_sizes_respect_the_budget():
    for batch, N in [(1, 512), (8, 64), (1, 4096), (64, 32)]:
        a, c = block_sizes(batch, N)
        assert 1 <= a <= N and 1 <= c <= N
        assert batch * a * c * N <= max(DEFAULT_BLOCK_ELEMENTS, batch * N)
    assert block_sizes(1, 512) == (1, 512)  # one query's N^2 logits fill the default block
    assert block_sizes(1, 64) == (64, 64)  # small problems are one block
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        block_sizes(1, 8, chunk=0)


def test_huge_logits_stay_finite_across_blocks():
    # logits of order 1e4 differ wildly between blocks: the running log-sum-exp must rescale.
    inputs = random_inputs(5, (1,), 8, 3, 2, 3000.0)
    out = third_order_attention(*inputs, chunk=3, key_chunk=2)
    assert torch.all(torch.isfinite(out))
    torch.testing.assert_close(out, third_order_attention_naive(*inputs), rtol=0, atol=1e-12)


def test_gradients_flow_through_the_blocked_and_unblocked_paths():
    inputs = [t.detach().requires_grad_() for t in random_inputs(1, (1,), 4, 2, 2)]
    assert torch.autograd.gradcheck(
        lambda *t: third_order_attention(*t, chunk=3, key_chunk=2), inputs
    )
    assert torch.autograd.gradcheck(lambda *t: third_order_attention(*t), inputs)
    blocked = third_order_attention(*inputs, chunk=1, key_chunk=1).square().sum()
    grads = torch.autograd.grad(blocked, inputs)
    naive = torch.autograd.grad(third_order_attention_naive(*inputs).square().sum(), inputs)
    for g, h in zip(grads, naive):
        torch.testing.assert_close(g, h, rtol=0, atol=1e-12)


def test_precision_rounds_inputs_logits_and_output():
    inputs = random_inputs(2, (1,), 6, 3, 2)
    out = third_order_attention(*inputs, precision=6)
    assert np.all(is_representable(out, 6))
    rounded_inputs = [round_to_bits(t, 6) for t in inputs]
    exact_on_rounded = third_order_attention_naive(*rounded_inputs)
    # only the logits' and the output's own rounding separate the two
    assert torch.max(torch.abs(out - exact_on_rounded)).item() < 0.2
    assert not torch.equal(out, third_order_attention(*inputs))
    torch.testing.assert_close(
        third_order_attention(*inputs, precision=None),
        third_order_attention_naive(*inputs),
        rtol=0,
        atol=1e-12,
    )


def test_shape_errors_name_the_problem():
    Q, K1, K2, V1, V2 = random_inputs(0, (1,), 4, 3, 2)
    with pytest.raises(ValueError, match="Q, K1 and K2 must share one shape"):
        third_order_attention(Q, K1[..., :2], K2, V1, V2)
    with pytest.raises(ValueError, match="V1 and V2"):
        third_order_attention(Q, K1, K2, V1, V2[:, :3])
    with pytest.raises(TypeError, match="torch tensor"):
        third_order_attention(Q.numpy(), K1, K2, V1, V2)


def match3_unit(x, M, beta):
    """Trilinear angles: logit(i, j1, j2) = beta cos(2 pi (x_i + x_j1 + x_j2) / M)."""
    a = torch.as_tensor(2 * np.pi * x / M)
    c, s = torch.cos(a), torch.sin(a)
    Q = beta * torch.stack([c, -c, -s, -s], dim=-1)
    K1 = torch.stack([c, s, c, s], dim=-1)
    K2 = torch.stack([c, s, s, c], dim=-1)
    return Q, K1, K2, K1, K2


def test_third_order_attention_solves_match3_with_four_dimensions():
    # The Hadamard values carry (cos(b + c), sin(b + c)) of the best pairs; a match makes that
    # (cos a_i, -sin a_i). This is the reason the unit exists: pairs in one step.
    task = get_task("match3", N=12, M=31)
    batch = task.sample(0, 40)
    x = batch.inputs["x"]
    beta = 4 * 31**2 * np.log(12**2)
    h = third_order_attention(*match3_unit(x, 31, beta), chunk=5, key_chunk=4)
    pair_angle = torch.stack([h[..., 0] - h[..., 1], h[..., 2] + h[..., 3]], dim=-1)
    a = torch.as_tensor(2 * np.pi * x / 31)
    agreement = pair_angle[..., 0] * torch.cos(a) - pair_angle[..., 1] * torch.sin(a)
    predictions = (agreement > (1 + np.cos(2 * np.pi / 31)) / 2).double()
    assert task.score(batch, predictions)["bit_errors"] == 0
    assert 0.2 < task.positive_rate(batch) < 0.8


def test_module_shapes_heads_and_training_step():
    torch.manual_seed(0)
    layer = ThirdOrderAttention(5, 3, 2, heads=2, dtype=torch.float64, chunk=2)
    X = torch.randn(4, 6, 5, dtype=torch.float64)
    out = layer(X)
    assert out.shape == (4, 6, 2) and out.dtype == torch.float64
    target = torch.randn(4, 6, 2, dtype=torch.float64)
    optimiser = torch.optim.SGD(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(5):
        loss = (layer(X) - target).square().mean()
        optimiser.zero_grad()
        loss.backward()
        assert all(
            p.grad is not None and torch.all(torch.isfinite(p.grad)) for p in layer.parameters()
        )
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="heads must be a positive int"):
        ThirdOrderAttention(5, 3, 2, heads=0)
    with pytest.raises(ValueError, match=r"\(B, N, d_in\)"):
        layer(X[0])


def test_module_heads_equal_per_head_functional_calls():
    torch.manual_seed(1)
    layer = ThirdOrderAttention(
        4, 2, 3, heads=2, value_dim=3, bias=False, scale=1.0, dtype=torch.float64
    )
    X = torch.randn(2, 5, 4, dtype=torch.float64)
    parts = []
    for h in range(2):
        rows, vrows = slice(2 * h, 2 * h + 2), slice(3 * h, 3 * h + 3)
        parts.append(
            third_order_attention_naive(
                X @ layer.query.weight[rows].T,
                X @ layer.key1.weight[rows].T,
                X @ layer.key2.weight[rows].T,
                X @ layer.value1.weight[vrows].T,
                X @ layer.value2.weight[vrows].T,
            )
        )
    expected = torch.cat(parts, dim=-1) @ layer.out.weight.T
    torch.testing.assert_close(layer(X), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("N,m,m_v,name", [(0, 3, 2, "N"), (4, 0, 2, "m"), (4, 3, 0, "m_v")])
def test_empty_sequences_or_widths_raise_a_clear_error(N, m, m_v, name):
    Q, K = torch.zeros(2, N, m), torch.zeros(2, N, m)
    V = torch.zeros(2, N, m_v)
    with pytest.raises(ValueError, match=rf"{name} >= 1"):
        third_order_attention(Q, K, K, V, V)
