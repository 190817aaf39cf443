"""Hugging Face attention heads as black boxes: `from_hf_attention` (BERT, GPT-2, Llama styles).

    target = from_hf_attention(model, layer=0, head=3)      # numpy (B, N, d) -> (B,)
    head = single_head(Oracle(target), affine=True)

For one head of a multi-head layer the target answers

    f(X) = w^T W_o[:, head] z_head(X)_N,

what the head writes into the residual stream at the last position (the output projection's
bias belongs to the layer, not to a head, and is left out; `heads="all"` reads the whole layer,
bias included, which is a sum of heads: extract it with `multi_head`). What every adapter shares
(LayerTarget, the readout, the float64 copy) is in attnlab.oracle.adapters.

Scope: what keeps a real head a bilinear single head, and what the adapter does about the rest.

- LayerNorm before the attention (pre-LN GPT-2 and Llama, BERT's previous layer): the probes
  are the attention module's own input, i.e. *after* the LayerNorm. The head recovered is the
  map from normalised hidden states; the LayerNorm itself is not part of the black box.
- Causal masks (GPT-2, Llama): the query is the last position, which attends to every position,
  so the mask changes nothing the target answers. Other positions are never read.
- Rotary embeddings (Llama-style): q_m^T k_n picks up a rotation R_(n-m), a different bilinear
  form for every offset, so a rotary head under its usual positions 0..N-1 is not a single head.
  By default (`positions="same"`) every probe token is given the same position id
  (`position_id`, default 0); the rotations then cancel in every score and the target is
  exactly the head's offset-0 form W_0 = s^2 W_k^T W_q / sqrt(d_head) (s: the rotary
  attention scaling, 1 for the default rope). The forms at other offsets, W_k^T R_k W_q, are not
  determined by W_0. `positions="sequential"` on a rotary head raises NotBilinearError.
  HF computes cos/sin in float32: position 0 is exact, other ids leave ~5e-8 relative error.
- Absolute position embeddings (GPT-2, BERT) are added at the embedding layer, before any
  attention module: tapping the module's input leaves them out.
- Numbers: the layer is deep-copied and upcast to float64 (the caller's model is untouched),
  run with eager attention (sdpa / flash kernels compute in lower precision and may reorder),
  on contiguous inputs (HF layers `.view` their inputs; a non-contiguous probe used to fail with
  "view size is not compatible").

`transformers` is an optional extra (`pip install 'attnlab[hf]'`); it is never imported here:
`from_hf_attention` reads modules by their attribute names, so a model object is all it needs.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from attnlab.oracle.adapters import (
    LayerTarget,
    NotBilinearError,
    _first_tensor,
    _float64_copy,
    _readout_vector,
)


@dataclass
class HFAttention:
    """Where one HF attention layer keeps what the adapter needs (found by attribute names)."""

    style: str  # "bert", "gpt2" or "llama"
    attention: torch.nn.Module  # the module to call on hidden states
    out_proj: torch.nn.Module  # Linear or Conv1D whose input is the concatenated heads
    num_heads: int
    head_dim: int
    hidden: int
    rotary: torch.nn.Module | None = None


def _is_llama(m) -> bool:
    return all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim"))


def _is_gpt2(m) -> bool:
    return (
        hasattr(m, "c_attn")
        and hasattr(m, "c_proj")
        and hasattr(m, "head_dim")
        and hasattr(m, "split_size")
    )


def _is_bert(m) -> bool:
    sub = getattr(m, "self", None)
    return (
        isinstance(sub, torch.nn.Module)
        and all(hasattr(sub, a) for a in ("query", "key", "value"))
        and hasattr(getattr(m, "output", None), "dense")
    )


def hf_attention_layers(model: torch.nn.Module) -> list[HFAttention]:
    """Every self-attention layer of a BERT-, GPT-2- or Llama-style model, in module order."""
    config = getattr(model, "config", None)
    rotary = next(
        (m for name, m in model.named_modules() if name.split(".")[-1] == "rotary_emb"), None
    )
    found: list[HFAttention] = []
    for _, m in model.named_modules():
        if getattr(m, "is_cross_attention", False):
            continue
        if _is_llama(m):
            n_heads = m.q_proj.out_features // m.head_dim
            found.append(
                HFAttention("llama", m, m.o_proj, n_heads, m.head_dim, m.q_proj.in_features, rotary)
            )
        elif _is_gpt2(m):
            found.append(HFAttention("gpt2", m, m.c_proj, m.num_heads, m.head_dim, m.embed_dim))
        elif _is_bert(m):
            s = m.self
            found.append(
                HFAttention(
                    "bert",
                    s,
                    m.output.dense,
                    s.num_attention_heads,
                    s.attention_head_size,
                    s.query.in_features,
                )
            )
    if not found:
        raise ValueError(
            f"found no BERT-, GPT-2- or Llama-style self-attention in {type(model).__name__} "
            f"(config: {type(config).__name__ if config is not None else 'none'}); wrap the "
            f"layer with from_module, or see docs/real-models.md for hook-based targets"
        )
    return found


def out_projection_matrix(out_proj: torch.nn.Module) -> torch.Tensor:
    """The output projection as a (d_out, heads * d_head) matrix (Linear, or GPT-2's transposed Conv1D)."""
    if isinstance(out_proj, torch.nn.Linear):
        return out_proj.weight
    if type(out_proj).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D: y = x W + b
        weight: torch.Tensor = out_proj.weight  # type: ignore[assignment]
        return weight.T
    raise TypeError(f"unknown output projection {type(out_proj).__name__}")


def from_hf_attention(
    model: torch.nn.Module,
    *,
    layer: int = 0,
    head: int | None = None,
    heads: int | Sequence[int] | str | None = None,
    readout=None,
    positions: str = "same",
    position_id: int = 0,
    kernel: str = "float64",
    seed: int = 0,
) -> LayerTarget:
    """A target from head `head` (or `heads`: a list, or "all") of self-attention layer `layer`.

    The probes are the attention module's input hidden states (after any LayerNorm); the answer
    is w^T W_o[:, heads] z_heads(X)_N, the selected heads' contribution to the residual stream
    at the last position, read along `readout` (a length-hidden_size vector; None: a unit
    vector drawn from `seed`, kept as `target.readout`). `heads="all"` is the whole layer's
    output there, output bias included (a multi-head target). `positions`: "same" (every token
    at `position_id`, the default; required for rotary heads, see the module docstring) or
    "sequential" (positions 0..N-1; refused for rotary heads). `kernel`: "float64" (default:
    scores, softmax and weighted sum in float64, attnlab's kernel registered with transformers'
    AttentionInterface; the projections, head split and rotary stay the model's own code) or
    "eager" (the model's own eager kernel: Llama's computes its softmax in float32, which puts a
    ~1e-7 relative floor under every answer). The model is not modified.
    """
    if head is not None and heads is not None:
        raise ValueError("pass head=H or heads=[...]/'all', not both")
    layers = hf_attention_layers(model)
    if not 0 <= layer < len(layers):
        raise ValueError(
            f"layer must be in 0..{len(layers) - 1} ({len(layers)} self-attention layers), got {layer}"
        )
    spec = layers[layer]
    selected = _select_heads(head, heads, spec.num_heads)
    if positions not in ("same", "sequential"):
        raise ValueError(f"positions must be 'same' or 'sequential', got {positions!r}")
    if spec.style == "llama" and positions == "sequential":
        raise NotBilinearError(
            "a rotary (Llama-style) head under positions 0..N-1 scores x_i against x_N with a rotation "
            "that depends on N-1-i: a different bilinear form for every offset, not one single head. "
            "Use positions='same' (every token at one position: the rotations cancel and the target is "
            "the head's offset-0 form), or extract per offset with your own from_module wrapper."
        )
    if spec.style == "llama" and spec.rotary is None:
        raise ValueError(
            "this Llama-style layer needs rotary embeddings, but the model has no `rotary_emb` "
            "module; pass the whole model (e.g. LlamaForCausalLM), not the layer alone"
        )
    attention = _float64_copy(spec.attention, upcast=True)
    _use_kernel(attention, kernel)
    W_o = out_projection_matrix(_float64_copy(spec.out_proj, upcast=True)).detach()
    out_bias = getattr(spec.out_proj, "bias", None)
    all_heads = heads == "all"
    w_t, w = _readout_vector(readout, W_o.shape[0], seed, torch.float64, W_o.device)
    columns = torch.cat(
        [torch.arange(h * spec.head_dim, (h + 1) * spec.head_dim) for h in selected]
    )
    w_eff = W_o[:, columns].T @ w_t  # readout pulled back through the selected heads' projection
    c_out = float(out_bias.detach().double() @ w_t) if (all_heads and out_bias is not None) else 0.0
    rotary = copy.deepcopy(spec.rotary) if spec.rotary is not None else None

    def forward(X: torch.Tensor) -> torch.Tensor:
        z = _concatenated_heads(spec.style, attention, X, rotary, positions, position_id)
        return z[:, -1, columns] @ w_eff + c_out

    target = LayerTarget(
        forward,
        spec.hidden,
        readout=w,
        description=f"{spec.style} layer {layer} head{'s' if len(selected) > 1 else ''} "
        f"{'all' if all_heads else ','.join(map(str, selected))}",
        details={
            "kind": "hf",
            "style": spec.style,
            "layer": layer,
            "heads": selected,
            "all_heads": all_heads,
            "positions": positions,
            "position_id": position_id,
            "num_heads": spec.num_heads,
            "head_dim": spec.head_dim,
        },
        device=W_o.device,
    )  # probes go where the layer lives (CPU or GPU)
    return target


def _select_heads(head, heads, n_heads: int) -> list[int]:
    if head is None and heads is None:
        raise ValueError(f"pass head=H (0..{n_heads - 1}) or heads='all'")
    chosen = (
        list(range(n_heads))
        if heads == "all"
        else [head]
        if head is not None
        else ([heads] if isinstance(heads, int) else list(heads))
    )
    bad = [h for h in chosen if not (isinstance(h, int) and 0 <= h < n_heads)]
    if bad or not chosen:
        raise ValueError(f"heads must be in 0..{n_heads - 1}, got {bad or chosen}")
    return chosen


FLOAT64_KERNEL = "attnlab_float64"


def _use_kernel(attention: torch.nn.Module, kernel: str) -> None:
    """Point the copy's own config at `kernel` (the caller's model keeps its own)."""
    if kernel not in ("float64", "eager"):
        raise ValueError(
            f"kernel must be 'float64' (attnlab's float64 kernel) or 'eager' (the model's "
            f"own eager kernel), got {kernel!r}"
        )
    name = "eager"
    if kernel == "float64":
        _register_float64_kernel()
        name = FLOAT64_KERNEL
    config = getattr(attention, "config", None)
    if config is not None:
        config = copy.copy(config)
        try:
            config._attn_implementation = name
        except Exception:  # a version where the name is validated differently: a plain attribute
            config.__dict__["_attn_implementation"] = name
        attention.config = config
    if getattr(attention, "reorder_and_upcast_attn", False):
        attention.reorder_and_upcast_attn = False  # type: ignore[assignment]  # GPT-2 float32 path; same maths


def _register_float64_kernel() -> None:
    from attnlab._optional import require

    transformers = require("transformers", "Hugging Face attention adapters")
    transformers.AttentionInterface.register(FLOAT64_KERNEL, float64_attention)


def float64_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """Eager attention in the inputs' dtype throughout (HF's Llama kernel softmaxes in float32).

    query (B, H, N, d_head), key/value (B, H_kv, N, d_head); returns ((B, N, H, d_head), weights).
    """
    groups = (
        query.shape[1] // key.shape[1]
    )  # grouped-query attention: each k/v head serves `groups`
    if groups > 1:
        key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scaling = query.shape[-1] ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[..., : key.shape[-2]]
    weights = torch.softmax(scores, dim=-1)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


def _concatenated_heads(style, attention, X, rotary, positions, position_id) -> torch.Tensor:
    """(B, N, heads * d_head): the heads' outputs, the input of the output projection."""
    if style == "bert":
        return _first_tensor(attention(X))
    captured: dict[str, torch.Tensor] = {}
    proj = attention.o_proj if style == "llama" else attention.c_proj
    hook = proj.register_forward_pre_hook(lambda _m, args: captured.__setitem__("z", args[0]))
    try:
        if style == "llama":
            B, N, _ = X.shape
            ids = (
                torch.full((B, N), position_id, dtype=torch.long, device=X.device)
                if positions == "same"
                else torch.arange(N, device=X.device).expand(B, N)
            )
            cos, sin = rotary(X, ids)
            attention(
                X, position_embeddings=(cos.to(X.dtype), sin.to(X.dtype)), attention_mask=None
            )
        else:
            attention(X)
    finally:
        hook.remove()
    return captured["z"]


__all__ = [
    "FLOAT64_KERNEL",
    "HFAttention",
    "float64_attention",
    "from_hf_attention",
    "hf_attention_layers",
    "out_projection_matrix",
]
