"""Steal a one-layer transformer through its outputs alone, then steal a head through a noisy API.

    python examples/extract_transformer.py            # d = 16, FFN width 32
    python examples/extract_transformer.py --d 6 --m 8 --residual

1. A random T(X) = w_o^T ReLU(A^T z(X)), z(X) = X^T softmax(X W x_N), sits behind an Oracle
   (the only door: it counts every query). The extractor learns the FFN from one-token queries
   (critical points of a ReLU network), then W from T(X) - T(-X), a single attention head.
2. A single head behind an oracle that rounds its answers to float32: the paper's noisy
   estimator against the robust one, at the same number of queries.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attnlab import Oracle
from attnlab.evaluate import relative_error
from attnlab.extract import noisy_single_head, one_layer_transformer
from attnlab.models import OneLayerTransformer, SingleHeadAttention
from attnlab.oracle.noise import RoundFloat32


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d", type=int, default=16, help="token width")
    parser.add_argument("--m", type=int, default=32, help="FFN hidden width")
    parser.add_argument("--residual", action="store_true", help="z(X) also adds the last token x_N")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    model = OneLayerTransformer.random(args.d, args.m, residual=args.residual, seed=args.seed)
    oracle = Oracle(model, d=args.d)
    stolen = one_layer_transformer(oracle, residual=args.residual, seed=args.seed)
    print(f"one-layer transformer, d={args.d}, m={args.m}, residual={args.residual}")
    print(
        f"  queries: {stolen.queries} ({stolen.stages['ffn']} for the FFN, "
        f"{stolen.stages['attention']} for W through T(X) - T(-X))"
    )
    print(f"  FFN neurons found: {stolen.info['ffn']['neurons_found']} of {args.m}")
    print(f"  relative error of W: {relative_error(stolen.W, model.W.detach().numpy()):.1e}")
    X = torch.randn(5, 7, args.d, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    gap = np.max(np.abs(stolen.predict(X.numpy()) - model(X).detach().numpy()))
    print(f"  largest output difference on 5 fresh 7-token sequences: {gap:.1e}")

    head = SingleHeadAttention.random(args.d, scale=1 / np.sqrt(args.d), seed=args.seed)
    W = head.W.detach().numpy()
    print(
        f"single head behind float32-rounded answers, d={args.d}, {args.d**2 + args.d} queries each"
    )
    for method in ("paper", "robust"):
        options = {"B": float(np.linalg.norm(W))} if method == "paper" else None
        result = noisy_single_head(
            Oracle(head, noise=RoundFloat32()), method=method, method_options=options
        )
        print(f"  {method:>6}: relative error of W {relative_error(result.W, W):.1e}")


if __name__ == "__main__":
    main()
