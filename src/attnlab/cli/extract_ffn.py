"""`attnlab extract ffn` and `attnlab extract transformer`: random target, extraction, comparison.

The ground truth is only read here, after the extractor has returned.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import typer

from attnlab.cli.apps import extract_app
from attnlab.cli.output import emit, err_console, guarded
from attnlab.evaluate import relative_error
from attnlab.extract.ffn import ffn_parameter_error, relu_ffn
from attnlab.extract.transformer import one_layer_transformer
from attnlab.models import OneLayerTransformer, ReluFFN
from attnlab.oracle import Oracle


def _spinner(message: str, progress: bool, work):
    if progress and err_console.is_terminal:
        with err_console.status(message):
            return work()
    return work()


def _check_sizes(d: int, m: int) -> None:
    if d < 1 or m < 1:
        raise ValueError(f"--d and --m must be at least 1, got d={d}, m={m}")


def _functional_error(model, predict, d: int, seed: int, n: int = 2000, lengths=(1, 1)) -> float:
    """Largest |model - extraction| on fresh random inputs (never shown to the extractor)."""
    rng = np.random.default_rng(seed + 7919)
    worst = 0.0
    for length in range(lengths[0], lengths[1] + 1):
        X = 3.0 * rng.standard_normal((n // (lengths[1] - lengths[0] + 1), length, d)) / np.sqrt(d)
        with torch.no_grad():
            truth = model(torch.as_tensor(X)).numpy()
        worst = max(worst, float(np.max(np.abs(predict(X) - truth))))
    return worst


def run_ffn(d: int, m: int, bias: bool, seed: int, progress: bool = True) -> dict[str, Any]:
    _check_sizes(d, m)
    model = ReluFFN.random(d, m, bias=bias, seed=seed)
    oracle = Oracle(model, d=d)
    result = _spinner(f"extracting a {d}-{m}-1 ReLU network", progress,
                      lambda: relu_ffn(oracle, d, bias=bias, m=m, seed=seed + 1))
    b = model.b.detach().numpy() if bias else None
    errors = ffn_parameter_error(result, model.A.detach().numpy(), model.w.detach().numpy(), b,
                                 float(model.c.detach()))
    report: dict[str, Any] = {"d": d, "m": m, "bias": bias, "queries": result.queries}
    report.update({f"queries_{stage}": count for stage, count in result.stages.items()})
    report.update(
        neurons_found=result.info["neurons_found"], neurons_unseen=result.info.get("neurons_unseen", 0),
        orientation=result.info["orientation"], rel_error_rows=errors["row_error"],
        rel_error_w=errors["weight_rel_error"],
    )
    if bias:
        report.update(rel_error_b=errors["bias_error"], error_c=errors["c_error"])
    report.update(functional_error=_functional_error(model, result.predict, d, seed),
                  fidelity=result.fidelity, seconds=result.seconds)
    return report


def run_transformer(d: int, m: int, residual: bool, seed: int, progress: bool = True) -> dict[str, Any]:
    _check_sizes(d, m)
    model = OneLayerTransformer.random(d, m, residual=residual, seed=seed)
    oracle = Oracle(model, d=d)
    result = _spinner(f"extracting a one-layer transformer (d={d}, m={m})", progress,
                      lambda: one_layer_transformer(oracle, residual=residual, m=m, seed=seed + 1))
    report: dict[str, Any] = {"d": d, "m": m, "residual": residual, "queries": result.queries}
    report.update({f"queries_{stage}": count for stage, count in result.stages.items()})
    report.update(
        rel_error_W=relative_error(result.params["W"], model.W.detach().numpy()),
        rel_error_v=relative_error(result.params["v"], model.value_vector.detach().numpy()),
        neurons_found=result.info["ffn"]["neurons_found"],
        functional_error=_functional_error(model, result.predict, d, seed, lengths=(1, 8)),
        fidelity=result.fidelity, seconds=result.seconds,
    )
    return report


@extract_app.command("ffn")
def ffn_command(
    d: int = typer.Option(32, "--d", help="Input width of the random ReLU network."),
    m: int = typer.Option(64, "--m", help="Hidden width."),
    bias: bool = typer.Option(False, "--bias", help="Give the network biases b and c (default: bias-free)."),
    seed: int = typer.Option(0, "--seed", help="Seeds the network and the extractor's lines."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object on the last line instead of a table."),
) -> None:
    """Extract a random one-hidden-layer ReLU network exactly, by critical points."""
    guarded(lambda: emit(run_ffn(d, m, bias, seed, progress=not no_progress), json_out, title="ReLU FFN extraction"))


@extract_app.command("transformer")
def transformer_command(
    d: int = typer.Option(16, "--d", help="Token width."),
    m: int = typer.Option(32, "--m", help="FFN hidden width."),
    residual: bool = typer.Option(False, "--residual", help="z(X) includes the residual x_N."),
    seed: int = typer.Option(0, "--seed", help="Seeds the model and the extractor."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No spinner on stderr."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object on the last line instead of a table."),
) -> None:
    """Extract a random one-layer transformer: the FFN, then W from T(X) - T(-X)."""
    guarded(lambda: emit(run_transformer(d, m, residual, seed, progress=not no_progress), json_out,
                         title="one-layer transformer extraction"))


__all__ = ["run_ffn", "run_transformer"]
