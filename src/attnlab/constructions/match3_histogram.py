"""A standard one-layer attention that solves Match3 on every input: the residue histogram.

Theorem 7 says a standard layer needs m p H of order N for Match3; trained standard layers
(benchmarks/results/training-grid.md) solve it at no size tried, even where m >= M. This module
gives the other side: one head of width M that solves Match3 exactly at every (N, M) and every
precision, so the smallest solving width is at most M and the trained layers' failure is one of
learning, not of representation.

    logits 0 (uniform attention),  value(x_j) = e_{x_j} in R^M,
    attended = (1/N) sum_j e_{x_j}   (the residue histogram, the same at every position),
    psi(attended, x_i) = 1 iff some residues b, c present (attended_b, attended_c > 0) have
                         x_i + b + c = 0 (mod M).

Match3 (attnlab.tasks.match) allows j1 = j2 and either equal to i, so presence is all psi needs.
The rounding of `attnlab.models.precision` keeps p significant bits, so a positive count / N stays
positive and zero stays zero at any p >= 1: each value coordinate carries one bit of information
(present or not), and Alice's message in Theorem 7's instance is M one-bit numbers, M + 1 bits
with the normaliser, against the bound's (N - 1) / 2. psi is a token-wise function of the
attended vector and the token's own residue (the residual the model allows), here a circular
self-convolution of the presence vector evaluated at -x_i.
"""

from __future__ import annotations

from itertools import product
from typing import Any

import numpy as np
import torch

from attnlab._random import Seed, as_generator
from attnlab.constructions.communication import run_layer
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.tasks import get_task

# exhaustive checks enumerate at most this many sequences
MAX_EXHAUSTIVE = 200_000


def histogram_layer(N: int, M: int, precision: int | None = None) -> MultiHeadAttentionLayer:
    """One head of width M (module doc) on (B, N, 1) residue tokens; outputs (B, N) bits."""
    if N < 1 or M < 2:
        raise ValueError(f"need N >= 1 and M >= 2, got N={N}, M={M}")
    identity = torch.eye(M, dtype=torch.float64)

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], 1, dtype=torch.float64)

    def value(x: torch.Tensor) -> torch.Tensor:
        return identity[x[..., 0].round().long() % M]

    def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        present = (attended > 0).to(torch.float64)  # (B, N, M)
        # number of present pairs (b, c) with b + c = s (mod M): a circular self-convolution,
        # whole numbers up to M^2 that the float64 FFT gets to well within 0.5
        spectrum = torch.fft.rfft(present, dim=-1)
        reachable = torch.fft.irfft(spectrum * spectrum, n=M, dim=-1) > 0.5
        wanted = (-tokens[..., 0].round().long()) % M
        return reachable.gather(-1, wanted[..., None])[..., 0].to(torch.float64)

    head = AttentionUnit(constant, constant, value, precision=precision)
    return MultiHeadAttentionLayer([head], output_map=readout, precision=precision)


def verify_histogram(
    N: int,
    M: int,
    precision: int | None = None,
    samples: int = 4096,
    seed: Seed = 0,
) -> dict[str, Any]:
    """Wrong bits of `histogram_layer` against the task's own solver: on every sequence when
    M^N <= MAX_EXHAUSTIVE, else on the task's balanced sample and as many near misses (one
    token of a solved sequence moved by +-1, so that an almost-matching triple must be told
    from a matching one)."""
    layer = histogram_layer(N, M, precision)
    task = get_task("match3", N=N, M=M)
    exhaustive = M**N <= MAX_EXHAUSTIVE
    if exhaustive:
        x = np.array(list(product(range(M), repeat=N)), dtype=np.int64)
    else:
        rng = as_generator(seed)
        sampled = task.sample(rng, samples).inputs["x"]
        near = sampled.copy()
        rows = np.arange(samples)
        cols = rng.integers(N, size=samples)
        near[rows, cols] = (near[rows, cols] + rng.choice([-1, 1], size=samples)) % M
        x = np.concatenate([sampled, near])
    truth = task.solve({"x": x})
    wrong = int((run_layer(layer, x).astype(np.int8) != truth).sum())
    return {
        "N": N,
        "M": M,
        "width": M,
        "heads": 1,
        "precision": precision,
        "sequences": int(x.shape[0]),
        "exhaustive": exhaustive,
        "positive_rate": float(truth.mean()),
        "wrong_bits": wrong,
    }


__all__ = ["histogram_layer", "verify_histogram"]
