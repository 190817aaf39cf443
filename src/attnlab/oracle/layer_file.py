"""An attention layer saved as safetensors with named tensors, as a one-head target.

The names follow Llama's (`q_proj.weight`, ...); docs/real-models.md lists them with shapes.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from attnlab.oracle.adapters import LayerTarget, _readout_vector

LAYER_TENSORS = ("q_proj.weight", "k_proj.weight", "v_proj.weight")
OPTIONAL_LAYER_TENSORS = ("q_proj.bias", "k_proj.bias", "v_proj.bias", "o_proj.weight", "readout")


def from_safetensors_layer(
    path: str | Path, *, head: int = 0, num_heads: int | None = None, readout=None, seed: int = 0
) -> LayerTarget:
    """A target from an attention layer saved as safetensors with named tensors (Llama names):

    q_proj.weight, k_proj.weight, v_proj.weight: (heads * d_head, d) (k/v may have fewer heads:
    grouped-query attention); optional q_proj.bias, k_proj.bias, v_proj.bias; o_proj.weight
    (d_out, heads * d_head) (default: identity, the heads' outputs themselves); readout (d_out,).
    The number of heads comes from `num_heads` or the file's metadata key "num_heads". No
    rotary embeddings (every token at one position), scale 1/sqrt(d_head), no mask.
    """
    tensors, metadata = _read_layer_file(path)
    n_heads = num_heads if num_heads is not None else int(metadata.get("num_heads", 0)) or None
    if n_heads is None:
        raise ValueError(
            f"{str(path)!r}: how many heads? pass --num-heads (or num_heads=), or store "
            f"metadata {{'num_heads': '...'}} in the file"
        )
    Wq, Wk, Wv = (tensors[n] for n in LAYER_TENSORS)
    if Wq.shape[0] % n_heads:
        raise ValueError(f"q_proj.weight has {Wq.shape[0]} rows, not a multiple of {n_heads} heads")
    head_dim = Wq.shape[0] // n_heads
    if not 0 <= head < n_heads:
        raise ValueError(f"head must be in 0..{n_heads - 1}, got {head}")
    kv_heads = Wk.shape[0] // head_dim
    kv = head // (n_heads // kv_heads)
    q_rows, kv_rows = (
        slice(head * head_dim, (head + 1) * head_dim),
        slice(kv * head_dim, (kv + 1) * head_dim),
    )
    zeros = torch.zeros(Wq.shape[0], dtype=torch.float64)
    bq = tensors.get("q_proj.bias", zeros)[q_rows]
    bk = tensors.get("k_proj.bias", zeros)[kv_rows]
    bv = tensors.get("v_proj.bias", zeros)[kv_rows]
    Wo = tensors.get("o_proj.weight", torch.eye(Wq.shape[0], dtype=torch.float64))[:, q_rows]
    if readout is None and "readout" in tensors:
        readout = tensors["readout"]
    w_t, w = _readout_vector(readout, Wo.shape[0], seed, torch.float64, torch.device("cpu"))
    Wq_h, Wk_h, Wv_h = Wq[q_rows], Wk[kv_rows], Wv[kv_rows]
    scale = 1.0 / math.sqrt(head_dim)
    out_dir = Wo.T @ w_t

    def forward(X: torch.Tensor) -> torch.Tensor:
        q = X[:, -1, :] @ Wq_h.T + bq
        k = X @ Wk_h.T + bk
        alpha = torch.softmax(torch.einsum("bnh,bh->bn", k, q) * scale, dim=-1)
        return torch.einsum("bn,bnh->bh", alpha, X @ Wv_h.T + bv) @ out_dir

    return LayerTarget(
        forward,
        int(Wq.shape[1]),
        readout=w,
        description=f"layer file {Path(path).name} head {head}",
        details={
            "kind": "safetensors-layer",
            "heads": [head],
            "num_heads": n_heads,
            "head_dim": head_dim,
        },
    )


def _read_layer_file(path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"layer file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name).to(torch.float64) for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{str(path)!r} is not a readable safetensors file ({exc})") from None
    missing = [n for n in LAYER_TENSORS if n not in tensors]
    unknown = sorted(set(tensors) - set(LAYER_TENSORS) - set(OPTIONAL_LAYER_TENSORS))
    if missing or unknown:
        raise ValueError(
            f"{str(path)!r}: an attention layer file holds {', '.join(LAYER_TENSORS)} and optionally "
            f"{', '.join(OPTIONAL_LAYER_TENSORS)}; missing {missing or 'none'}, unknown {unknown or 'none'}"
        )
    for name, t in tensors.items():
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{str(path)!r}: tensor {name!r} holds NaN or infinite values")
    return tensors, metadata
