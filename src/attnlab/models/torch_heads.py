"""PyTorch's own attention as an extraction target, and the parameters it implies.

`MultiheadReadout` turns a one-head `torch.nn.MultiheadAttention` into a value oracle's target:
the output at the last position, read out along a fixed vector w, (B, N, d) -> (B,). It is an
affine head (see models.attention.AffineHead); `affine_parameters` derives its (W, u, v, c)
analytically from the module's weights, for evaluation only (extractors never see it).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


class MultiheadReadout(nn.Module):
    """f(X) = w^T MultiheadAttention(query=x_N, key=X, value=X) for a one-head module."""

    def __init__(self, attention: nn.MultiheadAttention, readout: torch.Tensor | np.ndarray):
        super().__init__()
        if attention.num_heads != 1:
            raise ValueError(
                f"MultiheadReadout wraps one-head attention; this module has "
                f"{attention.num_heads} heads (a sum of heads is not a single head)"
            )
        if not attention.batch_first:
            raise ValueError("create the module with batch_first=True so inputs are (B, N, d)")
        dtype = attention.in_proj_weight.dtype
        self.attention = attention
        self.register_buffer("readout", torch.as_tensor(readout, dtype=dtype))

    @classmethod
    def random(
        cls, d: int, seed: int = 0, dtype=torch.float64, bias_scale: float = 1.0
    ) -> MultiheadReadout:
        """nn.MultiheadAttention(d, 1, bias=True) with every weight and bias drawn at random.

        PyTorch initialises the biases to zero; they are redrawn here so the head is truly affine.
        """
        generator = torch.Generator().manual_seed(seed)
        attention = nn.MultiheadAttention(d, num_heads=1, bias=True, batch_first=True, dtype=dtype)
        with torch.no_grad():
            for name, param in attention.named_parameters():
                std = bias_scale if "bias" in name else 1.0 / math.sqrt(d)
                param.copy_(std * torch.randn(param.shape, generator=generator, dtype=dtype))
        readout = torch.randn(d, generator=generator, dtype=dtype)
        return cls(attention, readout)

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        query = X[:, -1:, :]
        out, _ = self.attention(query, X, X, need_weights=False)
        return out[:, 0, :] @ self.readout


def affine_parameters(module: MultiheadReadout) -> dict[str, np.ndarray]:
    """(W, u, v, c) of the affine head a MultiheadReadout computes.

    score_i = (W_q x_N + b_q)^T (W_k x_i + b_k) / sqrt(d) = x_i^T W x_N + u^T x_i + (same for all i),
    with W = W_k^T W_q / sqrt(d) and u = W_k^T b_q / sqrt(d); the output read along w is
    sum_i alpha_i v^T x_i + c with v = W_v^T W_o^T w and c = w^T (W_o b_v + b_o).
    """
    att = module.attention
    d = att.embed_dim
    Wq, Wk, Wv = (t.detach().double().numpy() for t in att.in_proj_weight.chunk(3))
    bq, _, bv = (t.detach().double().numpy() for t in att.in_proj_bias.chunk(3))
    Wo = att.out_proj.weight.detach().double().numpy()
    bo = att.out_proj.bias.detach().double().numpy()
    w = module.readout.detach().double().numpy()
    head_scale = 1.0 / math.sqrt(d)  # one head: head_dim = d
    return {
        "W": Wk.T @ Wq * head_scale,
        "u": Wk.T @ bq * head_scale,
        "v": Wv.T @ Wo.T @ w,
        "c": np.float64(w @ (Wo @ bv + bo)),
    }
