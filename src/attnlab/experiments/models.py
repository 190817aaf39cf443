"""Trainable baselines over per-token encodings (n, N, token_dim) -> (n, N, out_dim).

All of them end in the same per-token output map psi, which sees the token's own input (the
residual access the paper's constructions need), so architectures differ only in how tokens
exchange information: one attention layer (pairwise or third-order), a recurrence, or a dense
layer over the flattened sequence.
"""

from __future__ import annotations

import torch
from torch import nn

from attnlab.experiments.config import ModelConfig


def _mlp(d_in: int, hidden: int, d_out: int, layers: int = 1) -> nn.Sequential:
    dims = [d_in] + [hidden] * layers
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*blocks, nn.Linear(dims[-1], d_out))


def _token_map(d_in: int, hidden: int, d_out: int) -> nn.Module:
    """phi: linear when hidden == 0, else a one-hidden-layer ReLU MLP."""
    return nn.Linear(d_in, d_out) if hidden == 0 else _mlp(d_in, hidden, d_out)


class Readout(nn.Module):
    """psi(features_i, x_i): the per-token output MLP with residual access to the token."""

    def __init__(self, d_features: int, token_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.net = _mlp(d_features + token_dim, hidden, out_dim)

    def forward(self, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([features, tokens], dim=-1))


class SummedHeads(nn.Module):
    """sum_h softmax(Q_h(E) K_h(E)^T) V_h(E): the paper's multi-head layer (heads summed), built
    from attnlab.models.attention_unit's trainable units, so trained and hand-set heads share one
    definition. Initial weights come from torch's global RNG (seeded by the training loop)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer

        units = [
            AttentionUnit.linear(
                width,
                width,
                seed=int(torch.randint(2**62, ()).item()),
                dtype=torch.get_default_dtype(),
            )
            for _ in range(heads)
        ]
        self.layer = MultiHeadAttentionLayer(units)  # no input map, output = the summed heads
        self.heads, self.width = heads, width

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        return self.layer(embedded)

    def attention_weights(self, embedded: torch.Tensor) -> torch.Tensor:
        """(n, H, N, N): row i of head h is where token i looks."""
        return torch.stack([unit.attention_weights(embedded) for unit in self.layer.heads], dim=1)


class AttentionBaseline(nn.Module):
    """phi (per token) -> one attention layer (pairwise or third-order) -> psi with residual."""

    def __init__(self, token_dim: int, out_dim: int, config: ModelConfig):
        super().__init__()
        m = config.width
        self.embed = _token_map(token_dim, config.embed_hidden, m)
        if config.arch == "third_order":
            from attnlab.models.third_order import ThirdOrderAttention

            self.attend = ThirdOrderAttention(m, m, m, heads=config.heads)
        else:
            self.attend = SummedHeads(m, config.heads)
        self.readout = Readout(m + m, token_dim, config.readout_hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        embedded = self.embed(tokens)
        return self.readout(torch.cat([self.attend(embedded), embedded], dim=-1), tokens)

    @torch.no_grad()
    def attention_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """(n, H, N, N) attention weights of a pairwise layer (what the pattern figure draws)."""
        if not isinstance(self.attend, SummedHeads):
            raise ValueError(
                "attention weights are drawn for pairwise attention only, not third-order"
            )
        return self.attend.attention_weights(self.embed(tokens))


class RecurrentBaseline(nn.Module):
    """LSTM or GRU, then psi per position. Bidirectional: one pass each way. Unidirectional: the
    streaming model of the paper's memory lower bound: the RNN reads the whole sequence, then
    emits position i's output while reading the sequence a second time, so every output can
    depend on every token (a single pass could not see the tokens after i at all)."""

    def __init__(self, token_dim: int, out_dim: int, config: ModelConfig):
        super().__init__()
        cell = nn.LSTM if config.arch == "lstm" else nn.GRU
        self.rnn = cell(
            token_dim,
            config.width,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=config.bidirectional,
        )
        directions = 2 if config.bidirectional else 1
        self.readout = Readout(directions * config.width, token_dim, config.readout_hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.rnn.bidirectional:
            states, _ = self.rnn(tokens)
        else:
            N = tokens.shape[1]
            states = self.rnn(torch.cat([tokens, tokens], dim=1))[0][:, N:]
        return self.readout(states, tokens)


class FlatMLP(nn.Module):
    """A ReLU MLP on the flattened sequence, emitting all N outputs at once (fixed N)."""

    def __init__(self, seq_len: int, token_dim: int, out_dim: int, config: ModelConfig):
        super().__init__()
        self.seq_len, self.out_dim = seq_len, out_dim
        self.net = _mlp(seq_len * token_dim, config.width, seq_len * out_dim, layers=config.layers)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        n, N, _ = tokens.shape
        if N != self.seq_len:
            raise ValueError(
                f"this MLP was built for sequences of length {self.seq_len}, got {N}; "
                f"build a new one for the new length"
            )
        return self.net(tokens.reshape(n, -1)).view(n, N, self.out_dim)


def build_model(config: ModelConfig, seq_len: int, token_dim: int, out_dim: int) -> nn.Module:
    """The baseline named by config.arch, mapping (n, seq_len, token_dim) to (n, seq_len, out_dim)."""
    if config.arch in ("attention", "third_order"):
        return AttentionBaseline(token_dim, out_dim, config)
    if config.arch in ("lstm", "gru"):
        return RecurrentBaseline(token_dim, out_dim, config)
    if config.arch == "mlp":
        return FlatMLP(seq_len, token_dim, out_dim, config)
    raise ValueError(f"unknown architecture '{config.arch}'")


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
