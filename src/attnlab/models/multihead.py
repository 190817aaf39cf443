"""Multi-head softmax-attention regressors: f(X) = sum_h softmax(X W_h x_N)^T X v_h.

The last token x_N is every head's attention query. Inputs are batches (B, N, d); outputs (B,).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from attnlab._random import Seed, as_generator, haar_orthogonal
from attnlab.models.attention import random_low_rank


class MultiHeadRegressor(nn.Module):
    """A sum of single-head regressors sharing the query token: heads (W_h, v_h), h = 1..H."""

    def __init__(
        self, Ws: torch.Tensor | np.ndarray, vs: torch.Tensor | np.ndarray, dtype=torch.float64
    ):
        super().__init__()
        Ws = torch.as_tensor(
            np.asarray(Ws) if not isinstance(Ws, torch.Tensor) else Ws, dtype=dtype
        )
        vs = torch.as_tensor(
            np.asarray(vs) if not isinstance(vs, torch.Tensor) else vs, dtype=dtype
        )
        if vs.ndim != 2:
            raise ValueError(f"vs must have shape (H, d), got {tuple(vs.shape)}")
        heads, d = vs.shape
        if Ws.shape != (heads, d, d):
            raise ValueError(
                f"Ws must have shape (H, d, d) = ({heads}, {d}, {d}) to match vs of shape ({heads}, {d}), "
                f"got {tuple(Ws.shape)}"
            )
        self.Ws = nn.Parameter(Ws)
        self.vs = nn.Parameter(vs)

    @property
    def d(self) -> int:
        return self.vs.shape[1]

    @property
    def heads(self) -> int:
        return self.vs.shape[0]

    @classmethod
    def random(
        cls,
        d: int,
        heads: int,
        rank: int | None = None,
        scale: float = 1.0,
        seed: Seed = 0,
        dtype=torch.float64,
    ) -> MultiHeadRegressor:
        """Independent random heads: each W_h of the given rank with entry scale `scale`, v_h standard normal."""
        if heads < 1:
            raise ValueError(f"heads must be >= 1, got {heads}")
        rng = as_generator(seed)
        Ws = np.stack([random_low_rank(d, rank, scale, rng) for _ in range(heads)])
        vs = rng.standard_normal((heads, d))
        return cls(Ws, vs, dtype=dtype)

    def scores(self, X: torch.Tensor) -> torch.Tensor:
        """Attention scores of every head, shape (B, H, N)."""
        if X.ndim != 3:
            raise ValueError(f"expected a batch of shape (B, N, d), got shape {tuple(X.shape)}")
        return torch.einsum("bnd,hde,be->bhn", X, self.Ws, X[:, -1, :])

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(self.scores(X), dim=-1)
        values = torch.einsum("bnd,hd->bhn", X, self.vs)
        return (weights * values).sum(dim=(1, 2))


def random_orthogonal_heads(
    d: int,
    dims: list[int] | tuple[int, ...],
    scale: float = 1.0,
    seed: Seed = 0,
    dtype=torch.float64,
) -> tuple[MultiHeadRegressor, list[np.ndarray]]:
    """Heads living in pairwise orthogonal subspaces of R^d, and those subspaces' bases.

    Head h acts only inside span(bases[h]) (a (d, dims[h]) matrix with orthonormal columns):
    W_h = B_h M_h B_h^T and v_h = B_h m_h with M_h, m_h random.
    """
    dims = [int(k) for k in dims]
    if any(k < 1 for k in dims) or sum(dims) > d:
        raise ValueError(f"subspace dimensions must be >= 1 and sum to at most d = {d}; got {dims}")
    rng = as_generator(seed)
    frame = haar_orthogonal(rng, d)
    bases, Ws, vs, start = [], [], [], 0
    for k in dims:
        basis = frame[:, start : start + k]
        start += k
        bases.append(basis)
        Ws.append(basis @ (scale * rng.standard_normal((k, k))) @ basis.T)
        vs.append(basis @ rng.standard_normal(k))
    return MultiHeadRegressor(np.stack(Ws), np.stack(vs), dtype=dtype), bases


# -- target families that stress a learner (benchmarks and property tests draw from these) -------
FAMILIES = ("random", "near-parallel", "unequal-scale", "unequal-rank")


def random_family_params(
    family: str, d: int, heads: int, seed=0, spread: float = 0.05, scale_ratio: float = 1000.0
) -> tuple[np.ndarray, np.ndarray]:
    """(Ws, vs) of H random heads from one of FAMILIES.

    "random": independent Gaussian heads (entries of W with standard deviation 1, v standard normal).
    "near-parallel": W_h = W_0 + spread * ||W_0||_F * E_h / ||E_h||_F (every W within `spread`
    of a common W_0, relative), v_h independent.
    "unequal-scale": value norms geometrically from 1 down to 1 / scale_ratio.
    "unequal-rank": head h has rank 1 + h (mod d), so ranks differ.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose one of {', '.join(FAMILIES)}")
    if heads < 1 or d < 1:
        raise ValueError(f"heads and d must be >= 1, got heads={heads}, d={d}")
    rng = as_generator(seed)
    vs = rng.standard_normal((heads, d))
    if family == "near-parallel":
        base = rng.standard_normal((d, d))
        noise = rng.standard_normal((heads, d, d))
        noise *= spread * np.linalg.norm(base) / np.linalg.norm(noise, axis=(1, 2), keepdims=True)
        Ws = base[None] + noise
    elif family == "unequal-rank":
        Ws = np.stack([random_low_rank(d, 1 + h % d, 1.0, rng) for h in range(heads)])
    else:
        Ws = rng.standard_normal((heads, d, d))
    if family == "unequal-scale" and heads > 1:
        vs *= scale_ratio ** (-np.arange(heads) / (heads - 1))[:, None]
    return Ws, vs


class MultiheadAttentionReadout(nn.Module):
    """f(X) = w^T MultiheadAttention(query=x_N, key=X, value=X): PyTorch's own H-head layer as a target.

    With bias=True every head is affine: its scores gain a key term X u_h and its value a
    constant; `canonical_parameters` gives the (W_h, u_h, v_h) and shared constant c it computes.
    """

    def __init__(self, attention: nn.MultiheadAttention, readout):
        super().__init__()
        if not attention.batch_first:
            raise ValueError("create the module with batch_first=True so inputs are (B, N, d)")
        if not attention._qkv_same_embed_dim:
            raise ValueError(
                "key, query and value must share the embedding width (kdim = vdim = embed_dim)"
            )
        self.attention = attention
        self.register_buffer(
            "readout", torch.as_tensor(readout, dtype=attention.in_proj_weight.dtype)
        )

    @classmethod
    def random(
        cls,
        d: int,
        heads: int,
        bias: bool = True,
        seed: int = 0,
        bias_scale: float = 1.0,
        dtype=torch.float64,
    ) -> MultiheadAttentionReadout:
        """nn.MultiheadAttention(d, heads, bias=bias) with every weight and bias redrawn at random."""
        if heads < 1 or d % heads:
            raise ValueError(
                f"heads must divide d = {d} (PyTorch splits d into equal head widths), got {heads}"
            )
        generator = torch.Generator().manual_seed(seed)
        attention = nn.MultiheadAttention(d, heads, bias=bias, batch_first=True, dtype=dtype)
        with torch.no_grad():
            for name, param in attention.named_parameters():
                std = bias_scale if "bias" in name else 1.0 / np.sqrt(d)
                param.copy_(std * torch.randn(param.shape, generator=generator, dtype=dtype))
        return cls(attention, torch.randn(d, generator=generator, dtype=dtype))

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        out, _ = self.attention(X[:, -1:, :], X, X, need_weights=False)
        return out[:, 0, :] @ self.readout

    def canonical_parameters(self) -> dict[str, np.ndarray]:
        """W (H, d, d), u (H, d), v (H, d) and c of the heads, derived from the weights (truth only).

        score_hi = (Q_h x_N + q_h)^T (K_h x_i + k_h) / sqrt(d_h) = x_i^T W_h x_N + u_h^T x_i + (terms
        without x_i), W_h = K_h^T Q_h / sqrt(d_h), u_h = K_h^T q_h / sqrt(d_h); head h's output read
        along w is sum_i alpha_hi v_h^T x_i + (w^T O_h b_v,h), and those constants plus w^T b_o sum to c.
        """
        att = self.attention
        d, H = att.embed_dim, att.num_heads
        dh = d // H
        Wq, Wk, Wv = (t.detach().double().numpy() for t in att.in_proj_weight.chunk(3))
        if att.in_proj_bias is not None:
            bq, _, bv = (t.detach().double().numpy() for t in att.in_proj_bias.chunk(3))
        else:
            bq = bv = np.zeros(d)
        Wo = att.out_proj.weight.detach().double().numpy()
        bo = (
            att.out_proj.bias.detach().double().numpy()
            if att.out_proj.bias is not None
            else np.zeros(d)
        )
        w = self.readout.detach().double().numpy()
        Ws, us, vs = [], [], []
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            Ws.append(Wk[rows].T @ Wq[rows] / np.sqrt(dh))
            us.append(Wk[rows].T @ bq[rows] / np.sqrt(dh))
            vs.append(Wv[rows].T @ Wo[:, rows].T @ w)
        return {
            "W": np.stack(Ws),
            "u": np.stack(us),
            "v": np.stack(vs),
            "c": np.float64(w @ (Wo @ bv + bo)),
        }
