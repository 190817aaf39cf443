"""Every public extractor follows the one convention (docs/architecture.md):

    extractor(oracle, *, <model options>, method="<default>", method_options=None, seed=0,
              fidelity_samples=<default>, progress=False) -> Extraction

The signature checks read `inspect.signature`; the behaviour checks run each extractor once on a
tiny target: the result is an Extraction with `dof` set and every `info` key documented, and an
unknown method option is refused with the allowed names.
"""

from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import attnlab.extract as extract
from attnlab import Oracle
from attnlab.extract.result import INFO_KEYS, Extraction

# extractor -> the model options it may take (same name, same meaning everywhere)
MODEL_OPTIONS = {
    "single_head": {"rank", "affine"},
    "noisy_single_head": set(),
    "multi_head": {"heads", "max_heads", "affine", "rank"},
    "orthogonal_heads": {"bases"},
    "relu_ffn": {"hidden", "bias"},
    "one_layer_transformer": {"residual", "hidden", "bias"},
}
COMMON = ("method", "method_options", "seed", "fidelity_samples", "progress")
EXTRACTORS = sorted(MODEL_OPTIONS)


def signature(name: str) -> inspect.Signature:
    return inspect.signature(getattr(extract, name))


@pytest.mark.parametrize("name", EXTRACTORS)
def test_oracle_first_then_keyword_only(name):
    params = list(signature(name).parameters.values())
    assert params[0].name == "oracle" and params[0].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    positional = [p.name for p in params[1:] if p.kind is not inspect.Parameter.KEYWORD_ONLY]
    assert not positional, f"{name}: put `*` right after oracle; positional now: {positional}"


@pytest.mark.parametrize("name", EXTRACTORS)
def test_common_options_with_their_defaults(name):
    params = signature(name).parameters
    missing = [p for p in COMMON if p not in params]
    assert not missing, f"{name} lacks {missing}"
    method = params["method"].default
    assert isinstance(method, str) and re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", method), method
    assert params["method_options"].default is None
    assert params["seed"].default == 0
    assert (
        isinstance(params["fidelity_samples"].default, int)
        and params["fidelity_samples"].default >= 0
    )
    assert params["progress"].default is False


@pytest.mark.parametrize("name", EXTRACTORS)
def test_only_model_options_besides_the_common_ones(name):
    names = list(signature(name).parameters)[1:]
    extra = [p for p in names if p not in COMMON and p not in MODEL_OPTIONS[name]]
    assert not extra, (
        f"{name}: {extra} are neither model options ({sorted(MODEL_OPTIONS[name])}) "
        f"nor common options; method-only options go into method_options"
    )
    assert "fidelity_queries" not in names


def _tiny_runs():
    """name -> (a fresh oracle, keyword arguments) for a quick exact run of each extractor."""
    from attnlab.models import (
        MultiHeadRegressor,
        OneLayerTransformer,
        ReluFFN,
        SingleHeadAttention,
        random_orthogonal_heads,
    )

    target, bases = random_orthogonal_heads(5, [2, 2], seed=0)
    return {
        "single_head": (lambda: Oracle(SingleHeadAttention.random(4, seed=0)), {}),
        "noisy_single_head": (lambda: Oracle(SingleHeadAttention.random(4, seed=0)), {}),
        "multi_head": (lambda: Oracle(MultiHeadRegressor.random(3, 2, seed=0), d=3), {"heads": 2}),
        "orthogonal_heads": (lambda: Oracle(target, d=5), {"bases": bases}),
        "relu_ffn": (lambda: Oracle(ReluFFN.random(4, 5, seed=0), d=4), {"hidden": 5}),
        "one_layer_transformer": (
            lambda: Oracle(OneLayerTransformer.random(4, 5, seed=0), d=4),
            {"hidden": 5},
        ),
    }


@pytest.mark.parametrize("name", EXTRACTORS)
def test_result_has_dof_and_documented_info(name):
    make_oracle, kwargs = _tiny_runs()[name]
    kwargs = {k: v for k, v in kwargs.items() if k in signature(name).parameters}
    result = getattr(extract, name)(make_oracle(), fidelity_samples=0, **kwargs)
    assert isinstance(result, Extraction)
    assert isinstance(result.dof, int) and result.dof > 0, f"{name}: dof = {result.dof!r}"
    undocumented = sorted(k for k in result.info if k not in INFO_KEYS)
    assert not undocumented, (
        f"{name}: document info keys {undocumented} in extract/result.py INFO_KEYS"
    )


@pytest.mark.parametrize("name", EXTRACTORS)
def test_unknown_method_option_is_refused_with_the_allowed_names(name):
    make_oracle, kwargs = _tiny_runs()[name]
    kwargs = {k: v for k, v in kwargs.items() if k in signature(name).parameters}
    with pytest.raises(ValueError, match="no_such_option"):
        getattr(extract, name)(make_oracle(), method_options={"no_such_option": 1}, **kwargs)


def test_seed_accepts_an_int_or_a_generator_and_refuses_anything_else():
    from attnlab.models import SingleHeadAttention

    head = SingleHeadAttention.random(3, seed=1)
    for seed in (3, np.random.default_rng(3)):
        assert extract.noisy_single_head(Oracle(head), seed=seed).dof == 12
    with pytest.raises(TypeError, match="seed must be"):
        extract.noisy_single_head(Oracle(head), seed="three")
