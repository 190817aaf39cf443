"""Black boxes from real layers in one call: any torch module, or a Hugging Face attention head.

    target = from_module(layer, readout=w)                   # numpy (B, N, d) -> (B,)
    target = from_hf_attention(model, layer=0, head=3)      # (attnlab.oracle.hf_attention)
    head = single_head(Oracle(target), affine=True)

What a target answers is one number per sequence: the layer's output at the last position,
read out along a vector w (`readout`; None draws a unit vector from `seed`). This module holds
what every adapter shares: `LayerTarget` (the numpy target around a torch computation, fed
contiguous float64 probes), the readout vector, the float64 deep copy (the caller's model is
untouched) and `from_module` for any torch module. The Hugging Face adapter, and the scope of
what keeps a real head a bilinear single head (LayerNorm, causal masks, rotary and absolute
positions, kernels), are in attnlab.oracle.hf_attention; its public names are importable from
here too (`from attnlab.oracle.adapters import from_hf_attention`), loaded on first use.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.errors import AttnlabError
from attnlab.oracle.targets import real_answers, real_queries


class NotBilinearError(AttnlabError, ValueError):
    """The layer, as asked for, is not a bilinear single head (e.g. rotary under real positions)."""


@dataclass
class LayerTarget:
    """A numpy target (B, N, d) -> (B,) around a torch computation, with what it reads out.

    `d` is the token width (the Oracle reads it), `readout` the vector w (None when the module
    already answers one number), `description` one line for reports, `details` the facts a
    comparison with the truth needs (architecture, heads, positions).
    """

    forward: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    d: int
    readout: np.ndarray | None = field(default=None, repr=False)
    description: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    dtype: torch.dtype = torch.float64
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def __call__(self, X) -> np.ndarray:
        X = real_queries(X, "(B, N, d)")
        if X.ndim != 3 or X.shape[-1] != self.d:
            raise ValueError(f"expected queries of shape (B, N, {self.d}), got {X.shape}")
        # HF attention layers call .view on their input: a contiguous copy is required
        tokens = torch.as_tensor(np.ascontiguousarray(X), dtype=self.dtype, device=self.device)
        with torch.no_grad():
            out = self.forward(tokens.contiguous())
        return real_answers(out, self.description or "the layer")


def _readout_vector(
    readout, width: int, seed: int, dtype, device
) -> tuple[torch.Tensor, np.ndarray]:
    if readout is None:
        w = np.random.default_rng(seed).standard_normal(width)
        w /= np.linalg.norm(w)
    else:
        w = np.asarray(
            readout.detach().cpu() if isinstance(readout, torch.Tensor) else readout,
            dtype=np.float64,
        )
        if w.shape != (width,):
            raise ValueError(
                f"readout must be a vector of length {width} (the layer's output width), "
                f"got shape {w.shape}"
            )
        if not np.all(np.isfinite(w)) or not np.any(w):
            raise ValueError("readout must be finite and not all zero")
    return torch.as_tensor(w, dtype=dtype, device=device), w


def _float64_copy(module: torch.nn.Module, upcast: bool) -> torch.nn.Module:
    module = copy.deepcopy(module) if upcast else module
    if upcast:
        module = module.to(torch.float64)
    return module.eval()


def _first_tensor(out) -> torch.Tensor:
    """HF layers return tuples (output, attention weights, ...); the output comes first."""
    while isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"the module returned {type(out).__name__}, not a tensor (or a tuple starting with one)"
        )
    return out


def from_module(
    module: torch.nn.Module,
    *,
    readout=None,
    position: int = -1,
    d: int | None = None,
    upcast: bool = True,
    forward_kwargs: dict | None = None,
    seed: int = 0,
) -> LayerTarget:
    """A target from any module mapping (B, N, d) -> (B, N, d_out) (read out at `position` along
    `readout`) or (B, N, d) -> (B,) (answered as is).

    Tuple outputs (HF layers) use their first element. `readout=None` draws a unit vector from
    `seed` (kept as `target.readout`). `upcast=True` runs a float64 deep copy. `d` is needed only
    when the module has no `embed_dim`, `hidden_size` or first Linear to read it from.
    Note: a module whose output at `position` depends on positions (rotary layers, masks that
    hide part of the sequence from that position) is not a single head; see the module docstring.
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"from_module wraps a torch.nn.Module, got {type(module).__name__}")
    width = d if d is not None else _input_width(module)
    layer = _float64_copy(module, upcast)
    param = next(iter(layer.parameters()), None)
    dtype = torch.float64 if upcast or param is None else param.dtype
    device = param.device if param is not None else torch.device("cpu")
    kwargs = dict(forward_kwargs or {})
    out_width = _output_width(module, width) if readout is None else len(readout)
    w_t, w = _readout_vector(readout, out_width, seed, dtype, device)

    def forward(X: torch.Tensor) -> torch.Tensor:
        out = _first_tensor(layer(X, **kwargs))
        if out.ndim == 1:
            return out
        if out.ndim != 3 or out.shape[-1] != w_t.shape[0]:
            raise ValueError(
                f"the module answered shape {tuple(out.shape)}; expected (B,) or (B, N, "
                f"{w_t.shape[0]}) to match the readout (pass readout= of the output width)"
            )
        return out[:, position, :] @ w_t

    return LayerTarget(
        forward,
        width,
        readout=w,
        description=f"{type(module).__name__} at position {position}",
        details={"kind": "module", "position": position},
        dtype=dtype,
        device=device,
    )


def _input_width(module: torch.nn.Module) -> int:
    for name in ("embed_dim", "hidden_size", "d"):
        value = getattr(module, name, None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    config = getattr(module, "config", None)
    if config is not None and isinstance(getattr(config, "hidden_size", None), int):
        return config.hidden_size
    for sub in module.modules():
        if isinstance(sub, torch.nn.Linear):
            return sub.in_features
    raise ValueError(f"cannot tell the token width of {type(module).__name__}; pass d=...")


def _output_width(module: torch.nn.Module, d: int) -> int:
    """Output width for a default readout: d unless the last Linear says otherwise."""
    linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1].out_features if linears else d


# The Hugging Face adapter lives in attnlab.oracle.hf_attention (which imports this module);
# its public names (hf_attention.__all__) stay importable from here, loaded on first use so
# that there is no import cycle.
def __getattr__(name: str):
    from attnlab.oracle import hf_attention

    if name in hf_attention.__all__:
        return getattr(hf_attention, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LayerTarget", "NotBilinearError", "from_module"]
