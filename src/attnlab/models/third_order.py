"""Third-order (tensor) attention, the higher-order unit Sanford et al. (2023) use to solve Match3.

For query i, every ordered pair (j1, j2) of positions gets the trilinear logit

    logit(i, j1, j2) = sum_l Q[i, l] K1[j1, l] K2[j2, l],

the softmax runs over all N^2 pairs, and the output is the weighted Hadamard product of values:

    out[i] = sum_{j1, j2} w(i, j1, j2) * (V1[j1] * V2[j2]).

A direct implementation holds N^3 logits per sequence. `third_order_attention` never does: it walks
blocks of queries (`chunk`) and, inside each, blocks of first keys j1 (`key_chunk`), combining
blocks with a running (online) log-sum-exp, so one block of (chunk, key_chunk, N) logits is the
largest temporary. By default both sizes are picked so a block holds at most
`DEFAULT_BLOCK_ELEMENTS` numbers (2 MiB in float64: small blocks stay in cache and measured
faster than large ones, see benchmarks/results/tasks.md), so N = 512 runs on a laptop CPU.
The contraction per block is two matrix products:

    logits[i, j1, :] = (Q[i] * K1[j1]) @ K2^T,   out[i] = sum_j1 V1[j1] * (w[i, j1, :] @ V2).

When gradients are needed and there is more than one block, each block is recomputed in the
backward pass (torch.utils.checkpoint) instead of stored, so training memory stays bounded too.

Precision p (see attnlab.models.precision): the five inputs, every logit and the output are
rounded to p significant bits; the softmax normaliser is an exact reduction of rounded terms.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from attnlab.models.precision import round_to_bits

DEFAULT_BLOCK_ELEMENTS = 1 << 18


def _check_inputs(Q, K1, K2, V1, V2) -> None:
    tensors = {"Q": Q, "K1": K1, "K2": K2, "V1": V1, "V2": V2}
    for name, tensor in tensors.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor, got {type(tensor).__name__}")
        if tensor.ndim < 2:
            raise ValueError(f"{name} must have shape (..., N, dim), got {tuple(tensor.shape)}")
    if not (Q.shape == K1.shape == K2.shape):
        raise ValueError(
            f"Q, K1 and K2 must share one shape (..., N, m), got {tuple(Q.shape)}, "
            f"{tuple(K1.shape)} and {tuple(K2.shape)}"
        )
    if V1.shape != V2.shape or V1.shape[:-1] != Q.shape[:-1]:
        raise ValueError(
            f"V1 and V2 must both have shape {tuple(Q.shape[:-1])} + (m_v,), got "
            f"{tuple(V1.shape)} and {tuple(V2.shape)}"
        )
    for name, size in (("N", Q.shape[-2]), ("m", Q.shape[-1]), ("m_v", V1.shape[-1])):
        if size == 0:
            raise ValueError(
                f"third-order attention needs {name} >= 1, got {name} = 0 (shapes Q "
                f"{tuple(Q.shape)}, V1 {tuple(V1.shape)}): pass at least one token, one "
                "query/key coordinate and one value coordinate"
            )


def block_sizes(
    batch: int,
    N: int,
    chunk: int | None = None,
    key_chunk: int | None = None,
    max_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> tuple[int, int]:
    """(queries per block, first keys per block) so one block of logits has <= max_elements
    entries where possible (never below one query and one key)."""
    for name, value in (("chunk", chunk), ("key_chunk", key_chunk)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise ValueError(f"{name} must be a positive int (or None to choose it), got {value!r}")
    per_pair_row = batch * N  # logits for one query and one first key
    if chunk is None and key_chunk is None:
        key_chunk = N if per_pair_row * N <= max_elements else max(1, max_elements // per_pair_row)
    if chunk is None:
        chunk = max(1, max_elements // (per_pair_row * min(key_chunk, N)))
    if key_chunk is None:
        key_chunk = max(1, max_elements // (per_pair_row * min(chunk, N)))
    return min(chunk, N), min(key_chunk, N)


def _block(Q_block, K1_block, K2, V1_block, V2, precision):
    """One block's (max logit, sum of exp(logit - max), sum of exp(logit - max) * values)."""
    B, a, m = Q_block.shape
    c = K1_block.shape[1]
    # (query, first key) pairs as rows of one matrix: one large GEMM instead of a*c small ones
    pairs = (Q_block.unsqueeze(2) * K1_block.unsqueeze(1)).reshape(B, a * c, m)
    logits = round_to_bits(pairs @ K2.transpose(1, 2), precision)  # (B, a*c, N)
    top = logits.detach().reshape(B, a, -1).amax(dim=-1)  # softmax is shift invariant: no gradient
    shift = top.repeat_interleave(c, dim=1).unsqueeze(-1)
    if logits.requires_grad:
        weights = torch.exp(logits - shift)
    else:  # inference: reuse the logits' memory, the block's largest tensor
        weights = logits.sub_(shift).exp_()
    total = weights.reshape(B, a, -1).sum(dim=-1)
    partial = (weights @ V2).reshape(B, a, c, -1)  # sum over j2 first: (B, a, c, m_v)
    numerator = (partial * V1_block.unsqueeze(1)).sum(dim=2)
    return top, total, numerator


def third_order_attention(
    Q: torch.Tensor,
    K1: torch.Tensor,
    K2: torch.Tensor,
    V1: torch.Tensor,
    V2: torch.Tensor,
    chunk: int | None = None,
    precision: int | None = None,
    key_chunk: int | None = None,
    max_elements: int = DEFAULT_BLOCK_ELEMENTS,
) -> torch.Tensor:
    """Third-order attention of (..., N, m) queries/keys and (..., N, m_v) values -> (..., N, m_v).

    `chunk` queries and `key_chunk` first keys per block (None: chosen from `max_elements`);
    `precision` p rounds inputs, logits and output to p bits (None: exact). See module docstring.
    """
    _check_inputs(Q, K1, K2, V1, V2)
    lead, (N, m), m_v = Q.shape[:-2], Q.shape[-2:], V1.shape[-1]
    Q, K1, K2 = (round_to_bits(t, precision).reshape(-1, N, m) for t in (Q, K1, K2))
    V1, V2 = (round_to_bits(t, precision).reshape(-1, N, m_v) for t in (V1, V2))
    batch = Q.shape[0]
    a, c = block_sizes(batch, N, chunk, key_chunk, max_elements)
    recompute = (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in (Q, K1, K2, V1, V2))
        and (a < N or c < N)
    )
    outputs = []
    for start in range(0, N, a):
        Q_block = Q[:, start : start + a]
        running_max = running_total = numerator = None
        for key_start in range(0, N, c):
            args = (
                Q_block,
                K1[:, key_start : key_start + c],
                K2,
                V1[:, key_start : key_start + c],
                V2,
                precision,
            )
            if recompute:
                top, total, part = checkpoint(_block, *args, use_reentrant=False)
            else:
                top, total, part = _block(*args)
            if running_max is None:
                running_max, running_total, numerator = top, total, part
                continue
            new_max = torch.maximum(running_max, top)
            old_scale, new_scale = torch.exp(running_max - new_max), torch.exp(top - new_max)
            running_total = running_total * old_scale + total * new_scale
            numerator = numerator * old_scale[..., None] + part * new_scale[..., None]
            running_max = new_max
        outputs.append(numerator / running_total[..., None])
    out = torch.cat(outputs, dim=1).reshape(*lead, N, m_v)
    return round_to_bits(out, precision)


def third_order_attention_naive(Q, K1, K2, V1, V2) -> torch.Tensor:
    """The definition written out with all N^3 logits at once (reference for tests and benchmarks)."""
    _check_inputs(Q, K1, K2, V1, V2)
    logits = torch.einsum("...il,...jl,...kl->...ijk", Q, K1, K2)
    shape = logits.shape
    weights = torch.softmax(logits.reshape(*shape[:-2], -1), dim=-1).reshape(shape)
    # sum over j2 first, so no (N, N, N, m_v) temporary: the N^3 weights are the only big tensor
    return torch.einsum("...ijv,...jv->...iv", weights @ V2.unsqueeze(-3), V1)


class ThirdOrderAttention(nn.Module):
    """Trainable third-order attention: learned linear Q, K1, K2 (width m) and V1, V2 (width
    value_dim, default m) per head, heads concatenated and projected to d_out.

    Logits are scaled by `scale` (default 1/sqrt(m), the usual choice for trainability; the paper's
    unit has no scale and a learned Q absorbs it). Input (B, N, d_in) -> output (B, N, d_out).
    Parameters use torch's default dtype unless `dtype` is given.
    """

    def __init__(
        self,
        d_in: int,
        m: int,
        d_out: int,
        heads: int = 1,
        value_dim: int | None = None,
        bias: bool = True,
        scale: float | None = None,
        chunk: int | None = None,
        precision: int | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        for name, value in (("d_in", d_in), ("m", m), ("d_out", d_out), ("heads", heads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.heads, self.m = heads, m
        self.value_dim = m if value_dim is None else value_dim
        self.scale = 1.0 / math.sqrt(m) if scale is None else float(scale)
        self.chunk, self.precision = chunk, precision
        width, value_width = heads * m, heads * self.value_dim
        self.query = nn.Linear(d_in, width, bias=bias, dtype=dtype)
        self.key1 = nn.Linear(d_in, width, bias=bias, dtype=dtype)
        self.key2 = nn.Linear(d_in, width, bias=bias, dtype=dtype)
        self.value1 = nn.Linear(d_in, value_width, bias=bias, dtype=dtype)
        self.value2 = nn.Linear(d_in, value_width, bias=bias, dtype=dtype)
        self.out = nn.Linear(value_width, d_out, bias=bias, dtype=dtype)

    def _split(self, projected: torch.Tensor, width: int) -> torch.Tensor:
        B, N, _ = projected.shape
        return projected.view(B, N, self.heads, width).transpose(1, 2)  # (B, H, N, width)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.ndim != 3:
            raise ValueError(f"expected a batch of shape (B, N, d_in), got shape {tuple(X.shape)}")
        B, N, _ = X.shape
        Q = self._split(self.query(X) * self.scale, self.m)
        K1, K2 = self._split(self.key1(X), self.m), self._split(self.key2(X), self.m)
        V1, V2 = (
            self._split(self.value1(X), self.value_dim),
            self._split(self.value2(X), self.value_dim),
        )
        attended = third_order_attention(
            Q, K1, K2, V1, V2, chunk=self.chunk, precision=self.precision
        )
        return self.out(attended.transpose(1, 2).reshape(B, N, self.heads * self.value_dim))
