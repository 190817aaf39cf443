"""Sources for `attnlab extract single-head` besides a random head: a file, or an HTTP service.

--target FILE: a model file from `attnlab make-target` (kind, d in its header; the truth is in
the file, so the row has parameter errors), or an attention layer saved as safetensors with the
names of oracle.layer_file.LAYER_TENSORS (one head, --head, read out along the file's `readout`
or a seeded unit vector). --url URL --key KEY: an `attnlab serve` endpoint (no truth: the row
has queries and fidelity; --save writes the recovered head as a make-target file to compare).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def extract_from_source(
    *,
    target: Path | None,
    url: str | None,
    key: str | None,
    rank,
    affine: bool,
    method: str,
    seed: int,
    fidelity_samples: int,
    head: int = 0,
    num_heads: int | None = None,
    save: Path | None = None,
) -> dict[str, Any]:
    """Build the oracle from the source, run single_head, and return the flat row."""
    from attnlab.evaluate.recipes import SingleHeadRun, single_head_row
    from attnlab.evaluate.truth import attention_head_form
    from attnlab.extract.single_head import single_head
    from attnlab.oracle import Oracle

    if (target is None) == (url is None):
        raise ValueError("give exactly one source: --target FILE, or --url URL --key KEY")
    truth, source = None, {}
    if url is not None:
        if not key:
            raise ValueError(
                "--url needs --key KEY (an API key of the service: `attnlab keys add NAME`)"
            )
        oracle = Oracle.http(url, key)
        source = {"source": url}
    else:
        from attnlab.serve.model_file import FORMAT, load_target

        if not target.is_file():
            raise ValueError(f"--target {str(target)!r} does not exist")
        if _header_format(target) == FORMAT:
            loaded = load_target(target)
            oracle = Oracle(loaded.module, d=loaded.d)
            truth = {n: p.detach().double().numpy() for n, p in loaded.module.named_parameters()}
            affine = affine or loaded.kind == "affine"
            source = {"source": str(target), "kind": loaded.kind}
        else:
            from attnlab.oracle.layer_file import from_safetensors_layer

            layer = from_safetensors_layer(target, head=head, num_heads=num_heads, seed=seed)
            oracle = Oracle(layer, d=layer.d)
            truth = _layer_truth(target, layer, attention_head_form)
            affine = affine or bool(
                abs(truth["u"]).max() > 0 or truth["c"] != 0
            )  # the file has biases
            source = {"source": str(target), "kind": "safetensors-layer", "head": head}
    result = single_head(
        oracle,
        rank=rank,
        affine=affine,
        method=method,
        seed=seed,
        fidelity_samples=fidelity_samples,
    )
    run = SingleHeadRun(d=oracle.d, rank=rank, method=method, affine=affine, seed=seed)
    if truth is not None:
        row = single_head_row(result, _ParamsOnly(truth), run)
    else:
        row = {
            "method": result.method,
            "d": oracle.d,
            "rank": result.info.get("rank"),
            "queries": result.queries,
            "dof": result.dof,
            "queries_per_dof": result.queries / result.dof,
            "fidelity": result.fidelity,
            "fidelity_queries": result.fidelity_queries,
            "seconds": result.seconds,
        }
    row.update(source)
    if save is not None:
        from attnlab.serve.model_file import save_target

        row["saved"] = str(save_target(result.to_module(), save))
    return row


def _header_format(path: Path) -> str | None:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("format")
    except (SafetensorError, OSError) as exc:
        raise ValueError(
            f"--target {str(path)!r} is not a readable safetensors file ({exc})"
        ) from None


def _layer_truth(path: Path, layer, attention_head_form) -> dict:
    """The head's (W, u, v, c) from the layer file's weights (evaluation only)."""
    from safetensors.numpy import load_file

    t = {k: v.astype("float64") for k, v in load_file(str(path)).items()}
    head, dh = layer.details["heads"][0], layer.details["head_dim"]
    n_heads = layer.details["num_heads"]
    kv = head // (n_heads // (t["k_proj.weight"].shape[0] // dh))
    q, k = slice(head * dh, (head + 1) * dh), slice(kv * dh, (kv + 1) * dh)
    import numpy as np

    Wo = t.get("o_proj.weight", np.eye(t["q_proj.weight"].shape[0]))[:, q]
    get = lambda name, rows: t[name][rows] if name in t else None
    return attention_head_form(
        t["q_proj.weight"][q],
        t["k_proj.weight"][k],
        t["v_proj.weight"][k],
        Wo,
        layer.readout,
        dh**-0.5,
        get("q_proj.bias", q),
        get("k_proj.bias", k),
        get("v_proj.bias", k),
    )


class _ParamsOnly:
    """Quacks like a module for evaluate.truth.true_parameters: named_parameters() of numpy arrays."""

    def __init__(self, params: dict):
        import torch

        self._params = {n: torch.as_tensor(v) for n, v in params.items()}

    def named_parameters(self):
        return iter(self._params.items())
