"""oracle.adapters: real attention layers as black boxes, recovered exactly through single_head.

Tiny Hugging Face models are built from configs with random weights (no downloads); the truth is
each head's bilinear form computed from its weights (evaluate.truth.hf_head_form).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from attnlab.evaluate.truth import attention_head_form, hf_head_form, parameter_errors
from attnlab.extract.single_head import PrecisionWarning, single_head
from attnlab.oracle import Oracle
from attnlab.oracle.adapters import NotBilinearError, from_hf_attention, from_module

D, HEADS, HEAD_DIM = 16, 4, 4


def tiny(name: str, bias: bool = True):
    """A 2-layer model of width 16, 4 heads; biases redrawn (HF initialises them to zero)."""
    tf = pytest.importorskip("transformers")
    common = dict(
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        vocab_size=50,
        initializer_range=0.3,
        attn_implementation="eager",
    )
    if name == "bert":
        model = tf.BertModel(
            tf.BertConfig(hidden_size=D, intermediate_size=32, max_position_embeddings=32, **common)
        )
    elif name == "gpt2":
        model = tf.GPT2Model(
            tf.GPT2Config(
                n_embd=D,
                n_layer=2,
                n_head=HEADS,
                vocab_size=50,
                n_positions=32,
                initializer_range=0.3,
                bos_token_id=0,
                eos_token_id=0,
                attn_implementation="eager",
            )
        )
    else:
        model = tf.LlamaForCausalLM(
            tf.LlamaConfig(
                hidden_size=D,
                intermediate_size=32,
                num_key_value_heads=2,
                attention_bias=bias,
                **common,
            )
        )
    torch.manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name, bias", [("bert", True), ("gpt2", True), ("llama", False), ("llama", True)]
)
@pytest.mark.parametrize("rank", [None, HEAD_DIM])
def test_a_real_head_is_recovered_exactly(name, bias, rank):
    model = tiny(name, bias)
    target = from_hf_attention(model, layer=1, head=2)
    ext = single_head(Oracle(target), affine=bias, rank=rank, fidelity_samples=200)
    truth = hf_head_form(model, 1, 2, target.readout)
    errors = parameter_errors(ext.params, truth)
    assert set(errors) == ({"W", "u", "v", "c"} if bias else {"W", "v"})
    assert max(errors.values()) < 1e-9, errors
    assert ext.fidelity < 1e-10
    assert np.linalg.matrix_rank(truth["W"]) == HEAD_DIM  # a head's W has rank d_head, not d


@pytest.mark.parametrize("bias", [False, True])
def test_llama_eager_kernel_softmaxes_in_float32_and_that_shows(bias):
    """Llama's eager kernel computes its softmax in float32 and answers in float64: the
    mantissas look exact, so the exact path runs, but the fidelity check exposes it (a warning,
    no a-priori estimate); told the precision, single_head reads W at the float32 floor."""
    model = tiny("llama", bias=bias)
    target = from_hf_attention(model, layer=0, head=1, kernel="eager")
    truth = hf_head_form(model, 0, 1, target.readout)
    with pytest.warns(PrecisionWarning, match="look like float64"):
        ext = single_head(Oracle(target), affine=bias, fidelity_samples=200)
    assert parameter_errors(ext.params, truth)["W"] > 1e-9  # the hidden float32 is real
    assert ext.info["estimated_error"] is None and ext.info["hidden_precision"] > 1e-10
    told = single_head(
        Oracle(target), affine=bias, fidelity_samples=200, method_options={"precision": 6e-8}
    )
    W_error = parameter_errors(told.params, truth)["W"]
    assert W_error < 1e-6
    assert W_error / 3 < told.info["estimated_error"] < 3 * W_error


@pytest.mark.parametrize("name", ["bert", "gpt2", "llama"])
def test_exact_float64_kernels_raise_no_precision_warning(name):
    model = tiny(name, bias=True)
    target = from_hf_attention(model, layer=0, head=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PrecisionWarning)
        ext = single_head(Oracle(target), affine=True, fidelity_samples=200)
    assert ext.info["fidelity_over_v"] < 1e-12


def test_rotary_heads_under_real_positions_are_refused():
    model = tiny("llama", bias=False)
    with pytest.raises(NotBilinearError, match="positions='same'"):
        from_hf_attention(model, layer=0, head=0, positions="sequential")
    # and the refusal is right: under positions 0..N-1 the answers depend on where tokens sit
    X = np.random.default_rng(0).standard_normal((1, 3, D))
    same = from_hf_attention(model, layer=0, head=0)
    assert np.allclose(same(X[:, [1, 0, 2]]), same(X))  # one position: a permutation-invariant head
    # another shared position gives the same offset-0 form, up to HF's float32 cos/sin
    target = from_hf_attention(model, layer=0, head=0, position_id=5)
    ext = single_head(Oracle(target), fidelity_samples=0)
    assert parameter_errors(ext.params, hf_head_form(model, 0, 0, target.readout))["W"] < 1e-6


def test_non_contiguous_probes_and_the_caller_model_is_untouched():
    model = tiny("gpt2")
    implementation = model.config._attn_implementation
    target = from_hf_attention(model, layer=0, heads="all")
    X = np.random.default_rng(0).standard_normal((3, D, 5)).transpose(0, 2, 1)  # not C-contiguous
    assert not X.flags.c_contiguous
    answers = target(X)
    with torch.no_grad():
        hidden = torch.as_tensor(np.ascontiguousarray(X), dtype=torch.float32)
        expected = model.h[0].attn(hidden)[0][:, -1, :].double().numpy() @ target.readout
    np.testing.assert_allclose(answers, expected, rtol=1e-4, atol=1e-5)
    assert next(model.parameters()).dtype == torch.float32
    assert model.config._attn_implementation == implementation


def test_all_heads_is_the_sum_of_heads_plus_the_output_bias():
    model = tiny("bert")
    w = np.random.default_rng(3).standard_normal(D)
    X = np.random.default_rng(4).standard_normal((5, 7, D))
    total = from_hf_attention(model, layer=0, heads="all", readout=w)(X)
    parts = sum(from_hf_attention(model, layer=0, head=h, readout=w)(X) for h in range(HEADS))
    bias = model.encoder.layer[0].attention.output.dense.bias.detach().double().numpy() @ w
    np.testing.assert_allclose(total, parts + bias, rtol=1e-12, atol=1e-12)


def test_bad_requests_say_what_to_do():
    model = tiny("bert")
    with pytest.raises(ValueError, match=r"heads must be in 0\.\.3"):
        from_hf_attention(model, layer=0, head=9)
    with pytest.raises(ValueError, match=r"layer must be in 0\.\.1"):
        from_hf_attention(model, layer=5, head=0)
    with pytest.raises(ValueError, match="head=H"):
        from_hf_attention(model, layer=0)
    with pytest.raises(ValueError, match="readout must be a vector of length 16"):
        from_hf_attention(model, layer=0, head=0, readout=np.ones(3))
    with pytest.raises(ValueError, match="no BERT-, GPT-2- or Llama-style"):
        from_hf_attention(torch.nn.Linear(3, 3), head=0)


def test_from_module_wraps_a_one_head_gpt2_attention_module():
    tf = pytest.importorskip("transformers")
    config = tf.GPT2Config(
        n_embd=8,
        n_layer=1,
        n_head=1,
        vocab_size=10,
        n_positions=16,
        initializer_range=0.4,
        bos_token_id=0,
        eos_token_id=0,
        attn_implementation="eager",
    )
    model = tf.GPT2Model(config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    attn = model.h[0].attn
    w = np.random.default_rng(0).standard_normal(8)
    ext = single_head(Oracle(from_module(attn, readout=w)), affine=True, fidelity_samples=200)
    full = attn.c_attn.weight.detach().double().numpy().T
    b = attn.c_attn.bias.detach().double().numpy()
    Wo = attn.c_proj.weight.detach().double().numpy().T
    truth = attention_head_form(
        full[:8], full[8:16], full[16:], Wo, w, 8**-0.5, b[:8], b[8:16], b[16:]
    )
    truth["c"] = (
        truth["c"] + attn.c_proj.bias.detach().double().numpy() @ w
    )  # the layer's output bias
    assert max(parameter_errors(ext.params, truth).values()) < 1e-9


def test_from_module_with_a_scalar_module_and_to_module_reproduces_the_oracle():
    from attnlab.models import AffineHead

    head = AffineHead.random(5, seed=2)
    oracle = Oracle(from_module(head))
    ext = single_head(oracle, affine=True, fidelity_samples=0)
    module = ext.to_module()
    assert next(module.parameters()).dtype == torch.float64
    X = np.random.default_rng(1).standard_normal((50, 6, 5))
    with torch.no_grad():
        mine = module(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(mine, oracle(X), rtol=1e-11, atol=1e-11)


def test_extraction_reprs_are_short_and_to_module_refuses_other_kinds():
    from attnlab.extract.result import Extraction
    from attnlab.models import SingleHeadAttention

    ext = single_head(Oracle(SingleHeadAttention.random(64, seed=0)), fidelity_samples=10)
    assert len(repr(ext)) < 200 and "[" not in repr(ext)
    html = ext._repr_html_()
    assert html.startswith("<table>") and "queries" in html and len(html) < 2000
    assert isinstance(ext.to_module(), SingleHeadAttention)
    with pytest.raises(ValueError, match="to_module builds single heads"):
        Extraction(
            params={"A": np.zeros((2, 2)), "b": np.zeros(2), "w": np.zeros(2)},
            queries=1,
            method="critical-points",
            dof=6,
        ).to_module()


def test_the_hf_adapter_is_importable_from_adapters_and_from_its_own_module():
    """oracle.hf_attention holds the HF adapter; oracle.adapters keeps its documented names (lazily,
    so adapters, which hf_attention imports, does not import it back at load time)."""
    import attnlab.oracle.adapters as adapters
    import attnlab.oracle.hf_attention as hf

    for name in (
        "from_hf_attention",
        "hf_attention_layers",
        "out_projection_matrix",
        "HFAttention",
    ):
        assert getattr(adapters, name) is getattr(hf, name)
    assert hf.NotBilinearError is NotBilinearError
    with pytest.raises(AttributeError, match="no attribute 'from_hf_attentoin'"):
        adapters.from_hf_attentoin  # noqa: B018 (the attribute access is the test)
