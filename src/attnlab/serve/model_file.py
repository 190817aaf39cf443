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
MAX_D = 4096  # a d x d float64 W is then 128 MiB


class ModelFileError(AttnlabError, ValueError):
    """A model file is missing, not safetensors, or does not describe a target attnlab knows."""


@dataclass(frozen=True)
class TargetKind:
    """How one family of targets is stored: its class and how to rebuild it from named tensors."""

    cls: type[torch.nn.Module]
    from_tensors: Callable[[dict[str, torch.Tensor]], torch.nn.Module]
    shapes: Callable[[int], dict[str, tuple[int, ...]]] | None = (
        None  # tensor name -> shape at width d
    )


TARGET_KINDS: dict[str, TargetKind] = {}


def register_kind(
    kind: str,
    cls: type[torch.nn.Module],
    from_tensors: Callable[[dict[str, torch.Tensor]], torch.nn.Module],
    shapes: Callable[[int], dict[str, tuple[int, ...]]] | None = None,
) -> None:
    """Make `kind` savable and servable. `from_tensors` receives the module's state_dict tensors;
    `shapes(d)`, if given, names every tensor a file of this kind holds and its shape at width d
    (without it, a file must hold exactly the tensors of the module it rebuilds)."""
    if kind in TARGET_KINDS and TARGET_KINDS[kind].cls is not cls:
        raise ValueError(
            f"kind {kind!r} is already registered for {TARGET_KINDS[kind].cls.__name__}; pick another name"
        )
    TARGET_KINDS[kind] = TargetKind(cls, from_tensors, shapes)


register_kind(
    "single-head",
    SingleHeadAttention,
    lambda t: SingleHeadAttention(t["W"], t["v"], dtype=t["v"].dtype),
    lambda d: {"W": (d, d), "v": (d,)},
)
register_kind(
    "affine",
    AffineHead,
    lambda t: AffineHead(t["W"], t["u"], t["v"], t["c"], dtype=t["v"].dtype),
    lambda d: {"W": (d, d), "u": (d,), "v": (d,), "c": ()},
)


def check_tensors(
    kind: str, d: int, tensors: dict[str, torch.Tensor], expected_names, where: str
) -> None:
    """Names, shapes and finiteness of a target's tensors, or a ModelFileError saying which is wrong."""
    entry = TARGET_KINDS[kind]
    shapes = entry.shapes(d) if entry.shapes is not None else None
    names = set(shapes) if shapes is not None else set(expected_names)
    if set(tensors) != names:
        extra, missing = sorted(set(tensors) - names), sorted(names - set(tensors))
        raise ModelFileError(
            f"{where}: a {kind!r} target holds exactly the tensors {', '.join(sorted(names))}; "
            f"found extra {extra or 'none'}, missing {missing or 'none'}"
        )
    for name, t in sorted(tensors.items()):
        if shapes is not None and tuple(t.shape) != shapes[name]:
            raise ModelFileError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, but a {kind!r} target "
                f"of width d = {d} needs {shapes[name]}"
            )
        if not t.is_floating_point():
            raise ModelFileError(
                f"{where}: tensor {name!r} is {t.dtype}, not a floating-point tensor"
            )
        if not bool(torch.isfinite(t).all()):
            raise ModelFileError(
                f"{where}: tensor {name!r} holds NaN or infinite weights; a target must be "
                f"finite (check the scale it was made with)"
            )


def _dtype_names(tensors: dict[str, torch.Tensor]) -> str:
    return ",".join(sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()}))


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
        raise ModelFileError(
            f"{type(module).__name__} has no `d` attribute (token width); add one to save it"
        )
    return int(d)


def save_target(module: torch.nn.Module, path: str | Path) -> Path:
    """Write `module`'s weights and a metadata header to a .safetensors file; returns the path."""
    kind = kind_of(module)
    tensors = {name: t.detach().cpu().contiguous() for name, t in module.state_dict().items()}
    d = _width(module)
    check_tensors(kind, d, tensors, tensors, f"cannot save this {type(module).__name__}")
    metadata = {"format": FORMAT, "kind": kind, "d": str(d), "dtype": _dtype_names(tensors)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=metadata)
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata header of a target file, without reading its weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"model file {str(path)!r} does not exist; create one with `attnlab make-target`"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as exc:
        raise ModelFileError(
            f"{str(path)!r} is not a readable safetensors file ({exc}); "
            f"targets are saved with attnlab.serve.save_target or `attnlab make-target`"
        ) from None
    if metadata.get("format") != FORMAT:
        raise ModelFileError(
            f"{str(path)!r} is safetensors but not an attnlab target (its metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r}); re-save it with save_target"
        )
    return metadata


def load_target(path: str | Path) -> TargetFile:
    """Rebuild the target saved in `path`, checking its metadata against its tensors."""
    path = Path(path)
    metadata = read_metadata(path)
    kind = metadata.get("kind", "")
    if kind not in TARGET_KINDS:
        raise ModelFileError(
            f"{str(path)!r} holds a target of kind {kind!r}, which this attnlab does not know "
            f"(known: {', '.join(TARGET_KINDS)}); import the module that registers it first"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise ModelFileError(
            f"{str(path)!r} has a readable header but unreadable tensors ({exc}); the file is "
            f"damaged, re-save it with save_target"
        ) from None
    try:
        module = TARGET_KINDS[kind].from_tensors(tensors)
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as exc:
        raise ModelFileError(
            f"{str(path)!r} says kind {kind!r} but its tensors ({', '.join(sorted(tensors))}) "
            f"do not build one: {exc}"
        ) from None
    d = _width(module)
    if metadata.get("d") != str(d):
        raise ModelFileError(
            f"{str(path)!r} says d = {metadata.get('d')} but its weights have d = {d}; "
            f"the file was edited or damaged, re-save it with save_target"
        )
    check_tensors(kind, d, tensors, module.state_dict(), repr(str(path)))
    if metadata.get("dtype") != _dtype_names(tensors):
        raise ModelFileError(
            f"{str(path)!r} says dtype {metadata.get('dtype')!r} but its tensors are "
            f"{_dtype_names(tensors)!r}; the file was edited or damaged, re-save it with save_target"
        )
    module.eval()
    return TargetFile(module=module, kind=kind, d=d, dtype=metadata.get("dtype", ""), path=path)
