"""Target models on disk: weights in safetensors (never pickle), what they are in its metadata header.

The header carries `format`, `kind`, `d` and `dtype`, so a server can say what it serves without
trusting any code in the file. Kinds are looked up in `TARGET_KINDS`; other model families join
with `register_kind` and need no change here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from attnlab.errors import AttnlabError
from attnlab.models.attention import AffineHead, SingleHeadAttention

FORMAT = "attnlab.target/1"


class ModelFileError(AttnlabError, ValueError):
    """A model file is missing, not safetensors, or does not describe a target attnlab knows."""


@dataclass(frozen=True)
class TargetKind:
    """How one family of targets is stored: its class and how to rebuild it from named tensors."""

    cls: type[torch.nn.Module]
    from_tensors: Callable[[dict[str, torch.Tensor]], torch.nn.Module]


TARGET_KINDS: dict[str, TargetKind] = {}


def register_kind(kind: str, cls: type[torch.nn.Module],
                  from_tensors: Callable[[dict[str, torch.Tensor]], torch.nn.Module]) -> None:
    """Make `kind` savable and servable. `from_tensors` receives the module's state_dict tensors."""
    if kind in TARGET_KINDS and TARGET_KINDS[kind].cls is not cls:
        raise ValueError(f"kind {kind!r} is already registered for {TARGET_KINDS[kind].cls.__name__}; pick another name")
    TARGET_KINDS[kind] = TargetKind(cls, from_tensors)


register_kind("single-head", SingleHeadAttention,
              lambda t: SingleHeadAttention(t["W"], t["v"], dtype=t["v"].dtype))
register_kind("affine", AffineHead,
              lambda t: AffineHead(t["W"], t["u"], t["v"], t["c"], dtype=t["v"].dtype))


@dataclass
class TargetFile:
    """A loaded target and the metadata it was saved with."""

    module: torch.nn.Module
    kind: str
    d: int
    dtype: str
    path: Path


def kind_of(module: torch.nn.Module) -> str:
    for kind, entry in TARGET_KINDS.items():
        if type(module) is entry.cls:
            return kind
    known = ", ".join(f"{k} ({e.cls.__name__})" for k, e in TARGET_KINDS.items())
    raise ModelFileError(
        f"cannot save a {type(module).__name__}: no target kind is registered for it (known: {known}). "
        f"Register one with attnlab.serve.model_file.register_kind(kind, cls, from_tensors)."
    )


def _width(module: torch.nn.Module) -> int:
    d = getattr(module, "d", None)
    if d is None:
        raise ModelFileError(f"{type(module).__name__} has no `d` attribute (token width); add one to save it")
    return int(d)


def save_target(module: torch.nn.Module, path: str | Path) -> Path:
    """Write `module`'s weights and a metadata header to a .safetensors file; returns the path."""
    kind = kind_of(module)
    tensors = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    dtypes = {str(t.dtype).removeprefix("torch.") for t in tensors.values()}
    metadata = {"format": FORMAT, "kind": kind, "d": str(_width(module)), "dtype": ",".join(sorted(dtypes))}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata header of a target file, without reading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file {str(path)!r} does not exist; create one with `attnlab make-target`")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(f"{str(path)!r} is not a readable safetensors file ({exc}); "
                             f"targets are saved with attnlab.serve.save_target or `attnlab make-target`") from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(f"{str(path)!r} is safetensors but not an attnlab target (its metadata format is "
                             f"{metadata.get('format')!r}, expected {FORMAT!r}); re-save it with save_target")
    return metadata


def load_target(path: str | Path) -> TargetFile:
    """Rebuild the target saved in `path`, checking its metadata against its tensors."""
    path = Path(path)
    metadata = read_metadata(path)
    kind = metadata.get("kind", "")
    if kind not in TARGET_KINDS:
        raise ModelFileError(f"{str(path)!r} holds a target of kind {kind!r}, which this attnlab does not know "
                             f"(known: {', '.join(TARGET_KINDS)}); import the module that registers it first")
    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    try:
        module = TARGET_KINDS[kind].from_tensors(tensors)
    except (KeyError, ValueError, RuntimeError) as exc:
        raise ModelFileError(f"{str(path)!r} says kind {kind!r} but its tensors ({', '.join(sorted(tensors))}) "
                             f"do not build one: {exc}") from None
    d = _width(module)
    if metadata.get("d") != str(d):
        raise ModelFileError(f"{str(path)!r} says d = {metadata.get('d')} but its weights have d = {d}; "
                             f"the file was edited or damaged, re-save it with save_target")
    module.eval()
    return TargetFile(module=module, kind=kind, d=d, dtype=metadata.get("dtype", ""), path=path)
