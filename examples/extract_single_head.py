"""Steal a single attention head from black-box queries, exactly.

Run:  python examples/extract_single_head.py [--d 32] [--rank 4] [--seed 0]

1. A random head f(X) = softmax(X W x_N)^T X v of rank r sits behind an Oracle, which counts
   every query. The adaptive extractor recovers W and v with exactly 2rd - r^2 + d queries (the
   number of free parameters), first told the rank, then detecting it itself.
2. PyTorch's own nn.MultiheadAttention (one head, with biases, float64) read out along a fixed
   vector is an affine head; it is recovered with d^2 + 2d + 1 queries and checked against the
   parameters derived from its weights.
"""

from __future__ import annotations

import argparse

from attnlab import Oracle
from attnlab.evaluate import relative_error
from attnlab.extract import single_head
from attnlab.models import SingleHeadAttention
from attnlab.models.torch_heads import MultiheadReadout, affine_parameters


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--d", type=int, default=32, help="token width")
    parser.add_argument("--rank", type=int, default=4, help="rank of the random head's W")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fidelity-samples", type=int, default=1000)
    args = parser.parse_args()
    d, r = args.d, args.rank

    head = SingleHeadAttention.random(d, rank=r, scale=3.0, seed=args.seed)
    W, v = head.W.detach().numpy(), head.v.detach().numpy()
    print(
        f"random head: d = {d}, rank {r}; free parameters 2rd - r^2 + d = {2 * r * d - r * r + d}"
    )
    for rank in (r, "auto", None):
        oracle = Oracle(head, d=d)
        result = single_head(
            oracle, rank=rank, seed=args.seed, fidelity_samples=args.fidelity_samples
        )
        print(
            f"  rank={str(rank):>4}: {result.queries:6d} queries (found rank {result.info['rank']}), "
            f"error W {relative_error(result.W, W):.1e}, v {relative_error(result.v, v):.1e}, "
            f"fidelity {result.fidelity:.1e} on {result.fidelity_queries} fresh sequences"
        )

    module = MultiheadReadout.random(d, seed=args.seed)
    oracle = Oracle(module, d=d)
    result = single_head(
        oracle, affine=True, seed=args.seed, fidelity_samples=args.fidelity_samples
    )
    analytic = affine_parameters(module)
    errors = ", ".join(
        f"{name} {relative_error(result.params[name], analytic[name]):.1e}" for name in "Wuvc"
    )
    print(
        f"torch.nn.MultiheadAttention(d={d}, num_heads=1, bias=True): {result.queries} queries "
        f"(d^2 + 2d + 1 = {d * d + 2 * d + 1}); error vs its weights: {errors}; fidelity {result.fidelity:.1e}"
    )


if __name__ == "__main__":
    main()
