"""The self-attention unit of Sanford, Hsu and Telgarsky (2023), with p-bit precision.

    f_{Q,K,V}(E) = softmax(Q(E) K(E)^T) V(E)          (one unit, rows are tokens)
    L(X)         = psi( sum_h f_{Q_h,K_h,V_h}(phi(X)), X )   (one layer, H heads summed)

Q, K, V, the input map phi and the output map psi act on each token separately; they may be any
torch callables (hand-set maps for the explicit constructions, `nn.Linear` for trained models).
psi receives the token's own input X as its second argument: a residual connection, which the
Match constructions need and which weakens none of the lower bounds (it only adds token-local
information). There is no 1/sqrt(m) factor: a temperature is part of Q.

Precision. With `precision=p`, every number the unit produces is rounded to p significant bits
with `attnlab.models.precision.round_to_bits` (the convention attnlab uses everywhere): phi(X),
queries, keys, values, logits, the unit's output, the sum over heads and psi's output. The
softmax normaliser is an exact (float64) reduction of the rounded logits. `precision=None` means
no rounding (float64 throughout).

The softmax subtracts each row's maximum before exponentiating, so temperatures of 1e6 and more
(the moment-curve and Match constructions need them) neither overflow nor underflow to 0/0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from attnlab._random import Seed, as_generator
from attnlab.models.precision import round_to_bits

TokenMap = Callable[[torch.Tensor], torch.Tensor]
Readout = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _check_precision(precision: int | None) -> int | None:
    if precision is not None and (
        isinstance(precision, bool) or int(precision) != precision or precision < 1
    ):
        raise ValueError(
            f"precision must be a positive number of bits or None (no rounding), got {precision!r}"
        )
    return None if precision is None else int(precision)


def _torch_generator(seed: Seed) -> torch.Generator:
    rng = as_generator(seed)
    return torch.Generator().manual_seed(int(rng.integers(2**62)))


def seeded_linear(
    d_in: int,
    d_out: int,
    generator: torch.Generator,
    bias: bool = True,
    dtype: torch.dtype = torch.float64,
) -> nn.Linear:
    """nn.Linear with torch's default uniform(-1/sqrt(d_in), 1/sqrt(d_in)) initialisation drawn
    from `generator`, so building a model never touches torch's global random state."""
    layer = torch.nn.utils.skip_init(nn.Linear, d_in, d_out, bias=bias, dtype=dtype)
    bound = 1.0 / np.sqrt(max(d_in, 1))
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        if bias:
            layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def stable_softmax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax with the maximum subtracted first: exact for logits of any size, never 0/0."""
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    weights = torch.exp(shifted)
    return weights / weights.sum(dim=dim, keepdim=True)


class AttentionUnit(nn.Module):
    """One unit softmax(Q(E) K(E)^T) V(E) on a batch E of shape (B, N, m_in).

    `query`, `key`, `value` map (..., m_in) to (..., m_qk), (..., m_qk), (..., m_v). Queries are
    processed `query_chunk` rows at a time, so memory stays at B * query_chunk * N logits however
    long the sequence (N = 4096 verifications run in a few hundred MB).
    """

    def __init__(
        self,
        query: TokenMap,
        key: TokenMap,
        value: TokenMap,
        precision: int | None = None,
        query_chunk: int = 1024,
    ):
        super().__init__()
        if query_chunk < 1:
            raise ValueError(f"query_chunk must be >= 1, got {query_chunk}")
        self.query, self.key, self.value = query, key, value
        self.precision = _check_precision(precision)
        self.query_chunk = int(query_chunk)

    @classmethod
    def linear(
        cls,
        m_in: int,
        m: int,
        m_value: int | None = None,
        bias: bool = True,
        precision: int | None = None,
        seed: Seed = 0,
        dtype: torch.dtype = torch.float64,
    ) -> AttentionUnit:
        """A trainable unit with linear Q, K (width m) and V (width m_value, default m)."""
        generator = _torch_generator(seed)
        maps = [
            seeded_linear(m_in, width, generator, bias, dtype)
            for width in (m, m, m if m_value is None else m_value)
        ]
        return cls(*maps, precision=precision)

    def projections(self, E: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rounded queries, keys and values of a batch E (B, N, m_in)."""
        if E.ndim != 3:
            raise ValueError(f"expected a batch of shape (B, N, m), got shape {tuple(E.shape)}")
        queries = round_to_bits(self.query(E), self.precision)
        keys = round_to_bits(self.key(E), self.precision)
        values = round_to_bits(self.value(E), self.precision)
        if queries.shape[-1] != keys.shape[-1]:
            raise ValueError(
                f"queries have width {queries.shape[-1]} but keys {keys.shape[-1]}: "
                "Q and K must map to the same dimension"
            )
        return queries, keys, values

    def attention_weights(self, E: torch.Tensor) -> torch.Tensor:
        """The (B, N, N) matrix softmax(Q K^T); row i is where token i looks."""
        queries, keys, _ = self.projections(E)
        return stable_softmax(round_to_bits(queries @ keys.transpose(-1, -2), self.precision))

    def forward(self, E: torch.Tensor) -> torch.Tensor:
        queries, keys, values = self.projections(E)
        keys_t = keys.transpose(-1, -2)
        parts = [
            stable_softmax(
                round_to_bits(queries[:, start : start + self.query_chunk] @ keys_t, self.precision)
            )
            @ values
            for start in range(0, queries.shape[1], self.query_chunk)
        ]
        return round_to_bits(torch.cat(parts, dim=1), self.precision)


class ResidualReadout(nn.Module):
    """A trainable psi: one linear map of (attention output, the token's own input)."""

    def __init__(
        self,
        m: int,
        d_in: int,
        d_out: int,
        seed: Seed = 0,
        dtype: torch.dtype = torch.float64,
    ):
        super().__init__()
        self.linear = seeded_linear(m + d_in, d_out, _torch_generator(seed), dtype=dtype)

    def forward(self, attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.cat([attended, tokens.to(attended.dtype)], dim=-1))


def _identity(E: torch.Tensor) -> torch.Tensor:
    return E


def _attended_only(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return attended


class MultiHeadAttentionLayer(nn.Module):
    """psi( sum_h head_h(phi(X)), X ): the paper's one-layer transformer with H heads.

    `precision` rounds phi's output (when there is an input map), the sum over heads and psi's
    output; every head must carry
    the same precision (or both None), so that one number fixes the model's bit budget.
    """

    def __init__(
        self,
        heads: Sequence[AttentionUnit],
        input_map: TokenMap | None = None,
        output_map: Readout | None = None,
        precision: int | None = None,
    ):
        super().__init__()
        if len(heads) == 0:
            raise ValueError("a layer needs at least one head")
        precision = _check_precision(precision)
        mismatched = [h.precision for h in heads if h.precision != precision]
        if mismatched:
            raise ValueError(
                f"the layer has precision {precision} but some heads have {mismatched}: "
                "build every head with the layer's precision"
            )
        self.heads = nn.ModuleList(heads)
        self.input_map = input_map if input_map is not None else _identity
        self.output_map = output_map if output_map is not None else _attended_only
        self.precision = precision

    @classmethod
    def trainable(
        cls,
        d_in: int,
        m: int,
        d_out: int,
        heads: int = 1,
        residual: bool = True,
        seed: Seed = 0,
        dtype: torch.dtype = torch.float64,
    ) -> MultiHeadAttentionLayer:
        """Linear phi (d_in -> m), `heads` linear units of width m, linear psi (with residual)."""
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        rng = as_generator(seed)
        phi = seeded_linear(d_in, m, _torch_generator(rng), dtype=dtype)
        units = [AttentionUnit.linear(m, m, seed=rng, dtype=dtype) for _ in range(heads)]
        psi = ResidualReadout(m, d_in if residual else 0, d_out, seed=rng, dtype=dtype)
        readout = psi if residual else _DropResidual(psi)
        return cls(units, input_map=phi, output_map=readout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        # Raw tokens are inputs, not produced numbers: only a real input map's output is rounded
        # (rounding the identity would corrupt integer fields such as positions when p < log2 N).
        embedded = (
            X if self.input_map is _identity else round_to_bits(self.input_map(X), self.precision)
        )
        attended = self.heads[0](embedded)
        for head in self.heads[1:]:
            attended = attended + head(embedded)
        attended = round_to_bits(attended, self.precision)
        return round_to_bits(self.output_map(attended, X), self.precision)


class _DropResidual(nn.Module):
    """Adapts a (attended, tokens) readout to see no token input (no residual)."""

    def __init__(self, readout: ResidualReadout):
        super().__init__()
        self.readout = readout

    def forward(self, attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.readout(attended, tokens[..., :0])
