"""A first tour of attnlab's synthetic tasks (Sanford, Hsu, Telgarsky 2023).

    python examples/tasks_tour.py [--N 16] [--n 200] [--seed 0]

1. qSA: sample a batch, read one position's target off its pointers, score two simple guesses.
2. Match3: sample a balanced batch and solve it with one third-order attention unit whose
   four-dimensional queries and keys are written by hand (logit = beta cos(2 pi (x_i + x_j1 + x_j2)/M)).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from attnlab.models import third_order_attention
from attnlab.tasks import get_task, list_tasks


def qsa_part(N: int, n: int, rng: np.random.Generator) -> None:
    task = get_task("qsa", N=N, q=2, d_prime=3)
    batch = task.sample(rng, n)
    z, y = batch.inputs["z"][0], batch.inputs["y"][0]
    print(f"qsa {task.params}: token 0 points at {y[0].tolist()}, so its target is the mean of")
    print(
        f"  z_{y[0][0]} = {np.round(z[y[0][0]], 3)} and z_{y[0][1]} = {np.round(z[y[0][1]], 3)}:"
        f" {np.round(batch.targets[0, 0], 3)}"
    )
    zeros = task.score(batch, np.zeros_like(batch.targets))
    own = task.score(batch, batch.inputs["z"])  # guess: every token averages only itself
    print(
        f"  predicting 0 everywhere: max error {zeros['max_error']:.3f}; predicting z_i: "
        f"{own['max_error']:.3f}; the paper's bar is eps = 1/(2q) = {task.threshold:.3f}"
    )


def match3_part(N: int, n: int, rng: np.random.Generator) -> None:
    M = 4 * N + 1
    task = get_task("match3", N=N, M=M)
    batch = task.sample(rng, n)
    angle = torch.as_tensor(2 * np.pi * batch.inputs["x"] / M)
    c, s = torch.cos(angle), torch.sin(angle)
    beta = 4 * M**2 * np.log(N**2)  # non-matching triples sit >= beta (1 - cos(2 pi / M)) lower
    Q = beta * torch.stack([c, -c, -s, -s], dim=-1)
    K1, K2 = torch.stack([c, s, c, s], dim=-1), torch.stack([c, s, s, c], dim=-1)
    h = third_order_attention(Q, K1, K2, K1, K2)  # values V1 = K1, V2 = K2
    # h holds (cos b cos c, sin b sin c, cos b sin c, sin b cos c) averaged over the best pairs:
    partner_cos, partner_sin = h[..., 0] - h[..., 1], h[..., 2] + h[..., 3]
    agreement = partner_cos * c - partner_sin * s  # cos(a_i + b + c) for the best pairs
    predictions = (agreement > (1 + np.cos(2 * np.pi / M)) / 2).double()
    score = task.score(batch, predictions)
    print(
        f"match3 N={N}, M={M}: {task.positive_rate(batch):.0%} of bits are 1 (balanced sampling);"
    )
    print(
        f"  one third-order unit with m = 4: {int(score['bit_errors'])} wrong bits out of {batch.targets.size}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--N", type=int, default=16, help="sequence length")
    parser.add_argument("--n", type=int, default=200, help="examples per batch")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print("tasks:", ", ".join(list_tasks()))
    qsa_part(args.N, args.n, rng)
    match3_part(args.N, args.n, rng)


if __name__ == "__main__":
    main()
