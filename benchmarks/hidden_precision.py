"""Float64-looking answers from a kernel that is not float64: Llama's eager kernel.

    python benchmarks/hidden_precision.py

Tiny random `transformers` Llama models (d = 16, 4 heads, 2 key/value heads; no downloads) at
initializer_range 0.3 and HF's default 0.02, with and without attention biases. For each, head 1
of layer 0 through `from_hf_attention` with attnlab's float64 kernel and with the model's own
eager kernel (softmax in float32, answers in float64), extracted by `single_head` as is and told
the precision (`method_options={"precision": 6e-8}`). Columns: W relative error against the
weights, fidelity / |v| on 200 fresh sequences, the extractor's estimate, queries, and whether
`PrecisionWarning` fired. Writes benchmarks/results/hidden_precision.md. Needs `attnlab[hf]`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from attnlab import Oracle
from attnlab.evaluate.truth import hf_head_form, parameter_errors
from attnlab.extract import single_head
from attnlab.extract.single_head import PrecisionWarning
from attnlab.oracle.adapters import from_hf_attention

RESULTS = Path(__file__).resolve().parent / "results"


def tiny_llama(init: float, bias: bool):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        attention_bias=bias,
        vocab_size=50,
        initializer_range=init,
        attn_implementation="eager",
    )
    return tf.LlamaForCausalLM(config).eval()


def main() -> None:
    rows = []
    for init in (0.3, 0.02):
        for bias in (False, True):
            model = tiny_llama(init, bias)
            for kernel in ("float64", "eager"):
                target = from_hf_attention(model, layer=0, head=1, kernel=kernel)
                truth = hf_head_form(model, 0, 1, target.readout)
                for told in (False, True):
                    options = {"precision": 6e-8} if told else None
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        ext = single_head(
                            Oracle(target),
                            affine=bias,
                            fidelity_samples=200,
                            method_options=options,
                        )
                    warned = any(issubclass(w.category, PrecisionWarning) for w in caught)
                    estimate = ext.info.get("estimated_error")
                    rows.append(
                        f"| {init} | {'yes' if bias else 'no'} | {kernel} | "
                        f"{'6e-8' if told else 'read off answers'} | "
                        f"{parameter_errors(ext.params, truth)['W']:.1e} | "
                        f"{ext.fidelity / np.linalg.norm(ext.params['v']):.1e} | "
                        f"{'none' if estimate is None else f'{estimate:.1e}'} | {ext.queries} | "
                        f"{'yes' if warned else 'no'} |"
                    )
                    print(rows[-1], flush=True)
    table = "\n".join(
        [
            "# Hidden precision: float64 answers from a float32 softmax",
            "",
            "`python benchmarks/hidden_precision.py` (tiny random Llama, d = 16, layer 0, head 1).",
            "",
            "| init range | biases | kernel | precision | W rel. error | fidelity / abs v "
            "| estimate | queries | PrecisionWarning |",
            "|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "hidden_precision.md").write_text(table)


if __name__ == "__main__":
    main()
