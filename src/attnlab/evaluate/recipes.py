"""Recipes: target -> Oracle -> extractor -> comparison with the truth -> one flat row (a dict).

The CLI prints these rows, the report's claims and the benchmarks tabulate them, and the tests
assert on them: one definition of "extract a random X and say how well it went". Rows hold
plain numbers and strings, ready for JSON. Recipes never print; `progress` is passed on to
extractors that show a tqdm bar.

Ground truth is read only after the extractor has returned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from attnlab.evaluate.truth import (
    frobenius_error,
    functional_error,
    gaussian_batches,
    parameter_errors,
    relative_error,
    true_parameters,
)
from attnlab.oracle import Oracle


# -- single head ----------------------------------------------------------------------------------
@dataclass
class SingleHeadRun:
    """A single-head experiment: the target to build, the oracle around it, the extractor's options."""

    d: int
    rank: int | str | None = None
    target_rank: int | None = None
    method: str = "adaptive"
    scale: float = 1.0
    affine: bool = False
    seed: int = 0
    measurements: int | None = None
    fidelity_samples: int = 1000
    noise: str | None = None
    tau: float | None = None
    digits: int | None = None
    oracle_options: dict[str, Any] = field(default_factory=dict)


def build_target(run: SingleHeadRun):
    """The random head: rank run.target_rank (default: run.rank when it is a number, else full)."""
    from attnlab.models import AffineHead, SingleHeadAttention

    if run.d < 1:
        raise ValueError(f"--d must be at least 1, got {run.d}")
    if isinstance(run.rank, int) and not 1 <= run.rank <= run.d:
        raise ValueError(
            f"--rank must be between 1 and d = {run.d}, got {run.rank}; use 'full' or 'auto'"
        )
    target_rank = run.target_rank
    if target_rank is None and isinstance(run.rank, int):
        target_rank = run.rank
    if target_rank is not None and not 1 <= target_rank <= run.d:
        raise ValueError(f"--target-rank must be between 1 and d = {run.d}, got {target_rank}")
    head_class = AffineHead if run.affine else SingleHeadAttention
    return head_class.random(run.d, rank=target_rank, scale=run.scale, seed=run.seed)


def build_oracle(target, run: SingleHeadRun) -> Oracle:
    """The black box around the target, with the noise model of the run if it names one."""
    from attnlab.oracle.noise import make_noise

    options = dict(run.oracle_options)
    if run.noise is not None:
        # the adversary gets white-box access to the target (see AdversarialNoise)
        options["noise"] = make_noise(run.noise, tau=run.tau, digits=run.digits, target=target)
        options.setdefault("seed", run.seed)
    return Oracle(target, d=run.d, **options)


def extract_single_head(oracle: Oracle, run: SingleHeadRun, progress: bool = False):
    """The exact extractor, or the robust noisy one when the oracle adds noise."""
    from attnlab.extract.noisy import noisy_single_head
    from attnlab.extract.single_head import single_head

    if oracle.noise is not None:
        if run.affine or run.rank is not None:
            raise ValueError(
                "--noise extracts full-rank, non-affine heads (robust noisy extractor); "
                "drop --affine and --rank"
            )
        return noisy_single_head(
            oracle, method="robust", seed=run.seed, fidelity_samples=run.fidelity_samples
        )
    method_options = {"measurements": run.measurements} if run.measurements is not None else None
    return single_head(
        oracle,
        rank=run.rank,
        affine=run.affine,
        method=run.method,
        seed=run.seed,
        method_options=method_options,
        fidelity_samples=run.fidelity_samples,
    )


def single_head_row(result, target, run: SingleHeadRun) -> dict[str, Any]:
    """Queries, accuracy against the true parameters, fidelity and time, as one flat dict."""
    report: dict[str, Any] = {
        "method": result.method,
        "d": run.d,
        "rank": result.info.get("rank"),
        "queries": result.queries,
        "dof": result.dof,
        "queries_per_dof": result.queries / result.dof,
    }
    errors = parameter_errors(result.params, true_parameters(target), names=("W", "v", "u", "c"))
    report.update({f"rel_error_{name}": error for name, error in errors.items()})
    report.update(
        fidelity=result.fidelity,
        fidelity_queries=result.fidelity_queries,
        seconds=result.seconds,
        oracle_seconds=result.info.get("oracle_seconds"),
        oracle_calls=result.info.get("oracle_calls"),
        max_abs_logit=result.info.get("max_abs_logit"),
    )
    if "error_estimate" in result.info:
        report.update({f"estimate_{k}": v for k, v in result.info["error_estimate"].items()})
    return report


def run_single_head(run: SingleHeadRun, progress: bool = False) -> dict[str, Any]:
    """build_target -> build_oracle -> extract_single_head -> single_head_row."""
    target = build_target(run)
    result = extract_single_head(build_oracle(target, run), run, progress=progress)
    return single_head_row(result, target, run)


def head_recovery(
    d: int, target_rank: int | None = None, scale: float = 1.0, seed: int = 0, **extractor_options
):
    """A random (W, v) head extracted exactly: (Extraction, rel. error of W, rel. error of v)."""
    from attnlab.extract.single_head import single_head
    from attnlab.models import SingleHeadAttention

    target = SingleHeadAttention.random(d, rank=target_rank, scale=scale, seed=seed)
    extractor_options.setdefault("fidelity_samples", 0)
    ext = single_head(Oracle(target), **extractor_options)
    truth = true_parameters(target)
    return ext, relative_error(ext.W, truth["W"]), relative_error(ext.v, truth["v"])


def torch_mha_recovery(d: int, seed: int = 0, fidelity_samples: int = 1000):
    """PyTorch's own one-head nn.MultiheadAttention, read out along a vector, extracted as an
    affine head: (Extraction, rel. error per parameter W, u, v, c)."""
    from attnlab.extract.single_head import single_head
    from attnlab.models.torch_heads import MultiheadReadout, affine_parameters

    target = MultiheadReadout.random(d, seed=seed)
    ext = single_head(Oracle(target, d=d), affine=True, fidelity_samples=fidelity_samples)
    return ext, parameter_errors(ext.params, affine_parameters(target), names=("W", "u", "v", "c"))


# -- noisy single head ----------------------------------------------------------------------------
def noisy_head_row(
    target,
    noise,
    method: str = "robust",
    seed: int = 0,
    oracle_seed: int | None = None,
    **method_options,
) -> dict[str, Any]:
    """One noisy extraction of a (W, v) head: queries and Frobenius / l2 / relative errors.

    For method="paper" the bound B defaults to max |W_ij|, the smallest its proof allows (its error
    grows like B^2; ||W||_F would be about d/3 times looser).
    Raises ExtractionError when the extractor refuses (noise beyond its guarantee).
    """
    from attnlab.extract.noisy import noisy_single_head

    truth = true_parameters(target)
    W, v = truth["W"], truth["v"]
    if method == "paper":
        method_options.setdefault("B", float(np.abs(W).max()))
    oracle = Oracle(target, noise=noise, seed=seed if oracle_seed is None else oracle_seed)
    ext = noisy_single_head(oracle, method=method, method_options=method_options or None, seed=seed)
    row = {
        "method": method,
        "d": int(W.shape[0]),
        "queries": ext.queries,
        "W_fro_error": float(np.linalg.norm(ext.W - W)),
        "v_l2_error": float(np.linalg.norm(ext.v - v)),
        "rel_error_W": relative_error(ext.W, W),
        "rel_error_v": relative_error(ext.v, v),
        "rel_fro_error_W": frobenius_error(ext.W, W),
    }
    if "error_estimate" in ext.info:
        row.update({f"estimate_{k}": value for k, value in ext.info["error_estimate"].items()})
    return row


def _or(value, default):
    return default if value is None else value


# -- ReLU FFN and one-layer transformer -----------------------------------------------------------
def _check_sizes(d: int, m: int) -> None:
    if d < 1 or m < 1:
        raise ValueError(f"--d and --m must be at least 1, got d={d}, m={m}")


def _queries_row(result, **keys: Any) -> dict[str, Any]:
    """The row's identifying keys, then the total queries and the queries of every stage."""
    row: dict[str, Any] = {**keys, "queries": result.queries}
    row.update({f"queries_{stage}": count for stage, count in result.stages.items()})
    return row


def _fresh_input_check(model, result, d: int, lengths, scale: float, seed: int) -> dict[str, Any]:
    """Functional error on 2000 fresh Gaussian inputs (drawn from `seed`), fidelity, seconds."""
    inputs = gaussian_batches(d, 2000, lengths=lengths, scale=scale, seed=seed)
    return {
        "functional_error": functional_error(model, result, inputs),
        "fidelity": result.fidelity,
        "seconds": result.seconds,
    }


def ffn_row(
    d: int,
    m: int,
    bias: bool = False,
    seed: int = 0,
    progress: bool = False,
    extractor_seed: int | None = None,
    input_scale: float | None = None,
) -> dict[str, Any]:
    """A random d-m-1 ReLU network extracted by critical points, compared modulo symmetries.

    `seed` draws the network (and the 2000 fresh inputs of the functional check, entries
    N(0, input_scale^2), default input_scale = 3 / sqrt(d)); the extractor gets
    `extractor_seed` (default seed + 1).
    """
    from attnlab.evaluate.truth import ffn_parameter_error
    from attnlab.extract.ffn import relu_ffn
    from attnlab.models import ReluFFN

    _check_sizes(d, m)
    model = ReluFFN.random(d, m, bias=bias, seed=seed)
    result = relu_ffn(Oracle(model, d=d), bias=bias, hidden=m, seed=_or(extractor_seed, seed + 1))
    b = model.b.detach().numpy() if bias else None
    errors = ffn_parameter_error(
        result, model.A.detach().numpy(), model.w.detach().numpy(), b, float(model.c.detach())
    )
    row = _queries_row(result, d=d, m=m, bias=bias)
    row.update(
        neurons_found=result.info["neurons_found"],
        neurons_unseen=result.info.get("neurons_unseen", 0),
        orientation=result.info["orientation"],
        rel_error_rows=errors["row_error"],
        rel_error_w=errors["weight_rel_error"],
    )
    if bias:
        row.update(rel_error_b=errors["bias_error"], error_c=errors["c_error"])
    scale = 3.0 / np.sqrt(d) if input_scale is None else input_scale
    row.update(_fresh_input_check(model, result, d, (1, 1), scale, seed + 7919))
    return row


def transformer_row(
    d: int,
    m: int,
    residual: bool = False,
    seed: int = 0,
    progress: bool = False,
    extractor_seed: int | None = None,
) -> dict[str, Any]:
    """A random one-layer transformer: its FFN, then W from T(X) - T(-X); errors and queries."""
    from attnlab.extract.transformer import one_layer_transformer
    from attnlab.models import OneLayerTransformer

    _check_sizes(d, m)
    model = OneLayerTransformer.random(d, m, residual=residual, seed=seed)
    result = one_layer_transformer(
        Oracle(model, d=d), residual=residual, hidden=m, seed=_or(extractor_seed, seed + 1)
    )
    row = _queries_row(result, d=d, m=m, residual=residual)
    row.update(
        rel_error_W=relative_error(result.params["W"], model.W.detach().numpy()),
        rel_error_v=relative_error(result.params["v"], model.value_vector.detach().numpy()),
        neurons_found=result.info["ffn"]["neurons_found"],
    )
    row.update(_fresh_input_check(model, result, d, (1, 8), 3.0 / np.sqrt(d), seed + 7919))
    return row


# -- multi-head -----------------------------------------------------------------------------------
def multi_head_row(
    d: int,
    heads: int,
    max_heads: int | None = None,
    seed: int = 0,
    scale: float = 1.0,
    fidelity_samples: int = 1000,
    progress: bool = False,
    method: str = "continuation",
    extractor_seed: int | None = None,
) -> dict[str, Any]:
    """A random H-head target, its canonical form learned from queries, compared with the truth's."""
    from attnlab.extract.multihead import canonical_dof, multi_head, published_query_bound
    from attnlab.models.canonical import MultiHeadParams, canonical_error
    from attnlab.models.multihead import MultiHeadRegressor

    if d < 1 or heads < 1:
        raise ValueError(f"--d and --heads must be at least 1, got d = {d}, heads = {heads}")
    target = MultiHeadRegressor.random(d, heads, scale=scale, seed=seed)
    known = None if max_heads is not None else heads
    result = multi_head(
        Oracle(target, d=d),
        heads=known,
        max_heads=max_heads,
        method=method,
        seed=_or(extractor_seed, seed + 1),
        fidelity_samples=fidelity_samples,
        progress=progress,
    )
    dof = canonical_dof(heads, d)
    return {
        "method": method,
        "d": d,
        "heads": heads,
        "max_heads": max_heads,
        "heads_found": result.info["heads_found"],
        "queries": result.queries,
        "bound": published_query_bound(heads, d),
        "dof": dof,
        "queries_per_dof": result.queries / dof,
        "rel_error": canonical_error(
            MultiHeadParams(result.W, result.v), MultiHeadParams.from_model(target)
        ),
        "fidelity": result.fidelity,
        "fidelity_queries": result.fidelity_queries,
        "seconds": result.seconds,
        **{f"stage_{name}": count for name, count in result.stages.items()},
    }


def orthogonal_heads_row(
    d: int, dims: list[int], seed: int = 0, fidelity_samples: int = 1000
) -> dict[str, Any]:
    """Heads in known orthogonal subspaces, each learned with the single-head algorithm."""
    from attnlab.extract.multihead import orthogonal_heads
    from attnlab.models.canonical import MultiHeadParams
    from attnlab.models.multihead import random_orthogonal_heads

    target, bases = random_orthogonal_heads(d, dims, seed=seed)
    result = orthogonal_heads(
        Oracle(target, d=d), bases=bases, seed=seed + 1, fidelity_samples=fidelity_samples
    )
    truth = MultiHeadParams.from_model(target)
    worst = max(np.max(np.abs(result.W - truth.W)), np.max(np.abs(result.v - truth.v)))
    return {
        "d": d,
        "dims": ",".join(map(str, dims)),
        "queries": result.queries,
        "expected_queries": sum(k * k + k for k in dims),
        "rel_error": float(worst / max(np.max(np.abs(truth.W)), np.max(np.abs(truth.v)))),
        "fidelity": result.fidelity,
        "seconds": result.seconds,
    }
