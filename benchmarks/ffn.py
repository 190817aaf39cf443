"""Exact ReLU-FFN extraction by critical points, and one-layer transformer extraction.

    python benchmarks/ffn.py            # FFN up to d = 64, m = 128; transformers at d = 16, m = 32
    python benchmarks/ffn.py --quick    # smaller sizes, well under a minute

For each configuration and seed: queries (split by stage), neurons found, how the orientation
was resolved, the largest errors of the recovered parameters modulo permutation and positive
rescaling, the functional error on fresh inputs (|x| ~ 3), and time. The parameter count
(d + 2) m + 1 (biases) or (d + 1) m puts the query count in scale.
Writes benchmarks/results/ffn.md (quick: ffn_quick.md).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small solves: threads only contend on a shared machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnlab import Oracle  # noqa: E402
from attnlab.extract.ffn import ffn_parameter_error, relu_ffn  # noqa: E402
from attnlab.evaluate import relative_error  # noqa: E402
from attnlab.oracle.sampling import random_sequences  # noqa: E402
from attnlab.extract.transformer import one_layer_transformer  # noqa: E402
from attnlab.models import OneLayerTransformer, ReluFFN  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def functional_error(model, predict, d, seed, lengths=(1, 1), n=1000):
    seqs = random_sequences(np.random.default_rng(seed + 999), d, n, lengths=lengths, scale=3.0)
    worst = 0.0
    for k in sorted({s.shape[0] for s in seqs}):
        X = np.stack([s for s in seqs if s.shape[0] == k])
        with torch.no_grad():
            truth = model(torch.as_tensor(X)).numpy()
        worst = max(worst, float(np.max(np.abs(predict(X) - truth))))
    return worst


def ffn_rows(configs, seeds):
    rows = []
    for d, m, bias in configs:
        for seed in seeds:
            model = ReluFFN.random(d, m, bias=bias, seed=seed)
            oracle = Oracle(model, d=d)
            ex = relu_ffn(oracle, bias=bias, m=m, seed=seed + 1, fidelity_queries=0)
            err = ffn_parameter_error(ex, model.A.detach().numpy(), model.w.detach().numpy(),
                                      model.b.detach().numpy() if bias else None, float(model.c.detach()))
            params = (d + 2) * m + 1 if bias else (d + 1) * m
            st = ex.stages
            rows.append(
                f"| {d} | {m} | {'yes' if bias else 'no'} | {seed} | {ex.queries} | {ex.queries / params:.1f} | "
                f"{st['search']} / {st['gradients']} / {st['refine']} / {st['fit']} | {ex.info['lines']} | "
                f"{ex.info['neurons_found']} | {ex.info['orientation']} | {err['row_error']:.1e} | "
                f"{err['weight_rel_error']:.1e} | {functional_error(model, ex.predict, d, seed):.1e} | "
                f"{ex.seconds:.1f} |")
    return rows


def transformer_rows(configs, seeds):
    rows = []
    for d, m, residual in configs:
        for seed in seeds:
            model = OneLayerTransformer.random(d, m, residual=residual, seed=seed)
            oracle = Oracle(model, d=d)
            ex = one_layer_transformer(oracle, residual=residual, m=m, seed=seed + 1, fidelity_samples=0)
            rows.append(
                f"| {d} | {m} | {'yes' if residual else 'no'} | {seed} | {ex.queries} | {ex.stages['ffn']} | "
                f"{ex.stages['attention']} | {relative_error(ex.W, model.W.detach().numpy()):.1e} | "
                f"{relative_error(ex.v, model.value_vector.detach().numpy()):.1e} | "
                f"{functional_error(model, ex.predict, d, seed, lengths=(1, 16)):.1e} | {ex.seconds:.1f} |")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.quick:
        ffn_configs = [(8, 16, True), (8, 16, False), (16, 32, True)]
        tf_configs = [(8, 16, False), (8, 16, True)]
        seeds = [0]
    else:
        ffn_configs = [(16, 32, True), (16, 32, False), (32, 64, True), (32, 64, False),
                       (64, 128, True), (64, 128, False)]
        tf_configs = [(16, 32, False), (16, 32, True)]
        seeds = [0, 1, 2]
    start = time.perf_counter()
    f_rows = ffn_rows(ffn_configs, seeds)
    t_rows = transformer_rows(tf_configs, seeds)
    suffix = "_quick" if args.quick else ""
    lines = [
        f"# ReLU FFN and one-layer transformer extraction{' (quick)' if args.quick else ''}",
        "",
        f"`python benchmarks/ffn.py{' --quick' if args.quick else ''}` on {platform.machine()}, Python "
        f"{platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - start:.0f} s in all "
        "(shared machine: times are indicative). Float64 targets; A entries N(0, 1/d), w N(0, 1/m), "
        "b and c N(0, 1).",
        "",
        "## g(x) = w^T ReLU(A^T x + b) + c",
        "",
        "Errors modulo permutation and positive rescaling: rows = largest entry error of the unit rows "
        "(with orientation), w = of w_j |a_j| relative to the largest; functional = max |g_hat - g| on "
        "1000 fresh x with |x| ~ 3.",
        "",
        "| d | m | biases | seed | queries | queries / parameter | search / gradients / refine / fit | lines | "
        "neurons | orientation | err rows | err w | functional err | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        *f_rows,
        "",
        "## T(X) = w_o^T ReLU(A^T z(X)), z = X^T softmax(X W x_N) (+ x_N)",
        "",
        "attention-stage queries are parent queries: 2 per query of the antisymmetric oracle, "
        "2 (d^2 + d) in all. Functional error: max over 1000 fresh sequences of lengths 1..16.",
        "",
        "| d | m | residual | seed | queries | ffn | attention | rel err W | rel err A w_o | functional err | s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *t_rows,
    ]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"ffn{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
