"""Target files (safetensors + metadata header) and the output defenses of `attnlab serve`."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import save_file

from attnlab.models import AffineHead, SingleHeadAttention
from attnlab.serve import (
    TARGET_KINDS,
    ModelFileError,
    OutputDefense,
    load_target,
    read_metadata,
    register_kind,
    round_significant,
    save_target,
)


@pytest.mark.parametrize(
    "module, kind",
    [
        (SingleHeadAttention.random(5, rank=2, seed=0), "single-head"),
        (AffineHead.random(5, seed=1), "affine"),
        (SingleHeadAttention.random(3, seed=2, dtype=torch.float32), "single-head"),
    ],
)
def test_a_saved_target_answers_exactly_as_before(tmp_path, module, kind):
    path = save_target(module, tmp_path / "t.safetensors")
    loaded = load_target(path)
    assert (loaded.kind, loaded.d) == (kind, module.d)
    assert read_metadata(path)["dtype"] == str(module.v.dtype).removeprefix("torch.")
    X = torch.as_tensor(
        np.random.default_rng(0).standard_normal((6, 4, module.d)), dtype=module.v.dtype
    )
    with torch.no_grad():
        assert torch.equal(loaded.module(X), module(X))


def test_files_are_safetensors_without_pickle(tmp_path):
    path = save_target(SingleHeadAttention.random(2, seed=0), tmp_path / "t.safetensors")
    header_length = int.from_bytes(path.read_bytes()[:8], "little")
    assert (
        path.read_bytes()[8:9] == b"{" and header_length < 1000
    )  # a JSON header, then raw tensors


def test_unreadable_or_foreign_files_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ModelFileError, match="does not exist.*attnlab make-target"):
        load_target(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    with pytest.raises(ModelFileError, match="not a readable safetensors file"):
        load_target(tmp_path / "junk.safetensors")
    save_file({"W": torch.zeros(2, 2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(ModelFileError, match="not an attnlab target"):
        load_target(tmp_path / "plain.safetensors")
    meta = {"format": "attnlab.target/1", "kind": "mystery", "d": "2", "dtype": "float32"}
    save_file({"W": torch.zeros(2, 2)}, str(tmp_path / "mystery.safetensors"), metadata=meta)
    with pytest.raises(ModelFileError, match="kind 'mystery'.*known: single-head, affine"):
        load_target(tmp_path / "mystery.safetensors")
    save_file(
        {"W": torch.zeros(3, 3), "v": torch.zeros(3)},
        str(tmp_path / "lying.safetensors"),
        metadata={**meta, "kind": "single-head"},
    )
    with pytest.raises(ModelFileError, match="says d = 2 but its weights have d = 3"):
        load_target(tmp_path / "lying.safetensors")


def test_new_kinds_join_through_the_registry(tmp_path):
    class Linear(torch.nn.Module):
        def __init__(self, w):
            super().__init__()
            self.w = torch.nn.Parameter(torch.as_tensor(w))

        @property
        def d(self):
            return self.w.shape[0]

        def forward(self, X):
            return X[:, -1, :] @ self.w

    with pytest.raises(ModelFileError, match="no target kind is registered for it"):
        save_target(Linear(np.ones(3)), tmp_path / "lin.safetensors")
    register_kind("test-linear", Linear, lambda t: Linear(t["w"]))
    try:
        loaded = load_target(save_target(Linear(np.arange(3.0)), tmp_path / "lin.safetensors"))
        assert loaded.kind == "test-linear"
        assert loaded.module(torch.ones(1, 2, 3, dtype=torch.float64)).item() == 3.0
        with pytest.raises(ValueError, match="already registered"):
            register_kind("test-linear", SingleHeadAttention, lambda t: None)
    finally:
        del TARGET_KINDS["test-linear"]


@given(
    st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
    st.integers(1, 15),
)
def test_rounding_keeps_the_nearest_value_with_that_many_significant_digits(y, digits):
    r = float(round_significant(np.array([y]), digits)[0])
    if y == 0:
        assert r == 0
        return
    exponent = math.floor(math.log10(abs(y)))
    ulp = 10.0 ** (exponent - digits + 1)
    # Nearest decimal with `digits` significant digits: within half a unit in its last place.
    assert abs(r - y) <= 0.5 * ulp * (1 + 1e-9) + 4 * math.ulp(y)
    assert float(f"{r:.{digits - 1}e}") == r  # r is itself a `digits`-digit decimal


def test_defense_adds_seeded_noise_then_rounds():
    y = np.linspace(-1, 1, 1000)
    defense = OutputDefense(noise_sigma=0.1, round_digits=4)
    a = defense(y, None, np.random.default_rng(5))
    b = defense(y, None, np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, round_significant(a, 4))
    assert 0.09 < np.std(a - y) < 0.11
    with pytest.raises(ValueError, match="noise_sigma"):
        OutputDefense(noise_sigma=-1.0)
    with pytest.raises(ValueError, match="round_digits"):
        OutputDefense(round_digits=0)


def _write(path, tensors, d, dtype="float64", kind="single-head"):
    meta = {"format": "attnlab.target/1", "kind": kind, "d": str(d), "dtype": dtype}
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize(
    "tensors, header_dtype, words",
    [
        (
            {
                "W": torch.zeros(3, 3, dtype=torch.float64),
                "v": torch.zeros(3, 1, dtype=torch.float64),
            },
            "float64",
            r"tensor 'v' has shape \(3, 1\).*needs \(3,\)",
        ),
        (
            {
                "W": torch.full((3, 3), float("nan"), dtype=torch.float64),
                "v": torch.zeros(3, dtype=torch.float64),
            },
            "float64",
            "NaN or infinite",
        ),
        (
            {
                "W": torch.zeros(3, 3, dtype=torch.float64),
                "v": torch.tensor([1.0, float("inf"), 0], dtype=torch.float64),
            },
            "float64",
            "NaN or infinite",
        ),
        (
            {"W": torch.zeros(3, 3, dtype=torch.float16), "v": torch.zeros(3, dtype=torch.float16)},
            "float64",
            "says dtype 'float64' but its tensors are 'float16'",
        ),
        (
            {
                "W": torch.zeros(3, 3, dtype=torch.float64),
                "v": torch.zeros(3, dtype=torch.float64),
                "backdoor": torch.zeros(1, dtype=torch.float64),
            },
            "float64",
            r"extra \['backdoor'\]",
        ),
        ({"W": torch.zeros(3, 3, dtype=torch.float64)}, "float64", "do not build one"),
    ],
)
def test_damaged_or_doctored_model_files_are_refused(tmp_path, tensors, header_dtype, words):
    path = _write(tmp_path / "t.safetensors", tensors, 3, header_dtype)
    with pytest.raises(ModelFileError, match=words):
        load_target(path)


def test_bad_weights_are_refused_on_write(tmp_path):
    head = SingleHeadAttention(np.full((3, 3), np.nan), np.zeros(3))
    with pytest.raises(ModelFileError, match="cannot save.*NaN or infinite"):
        save_target(head, tmp_path / "t.safetensors")
    odd = SingleHeadAttention(np.zeros((3, 3)), np.zeros((3, 1)))
    with pytest.raises(ModelFileError, match=r"shape \(3, 1\)"):
        save_target(odd, tmp_path / "t.safetensors")
    assert not (tmp_path / "t.safetensors").exists()
