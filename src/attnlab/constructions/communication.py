"""The communication instances behind the lower bounds, checked exhaustively at tiny sizes.

Theorem 4 (qSA) and Theorem 7 (Match3) both reduce set disjointness to one output of one layer.
What is checked here, and what is argued:

1. One-way DISJ_n needs n bits, for ANY protocol (exact, exhaustive). `disjointness_rows(n)`
   builds the 2^n x 2^n matrix DISJ(a, b) and counts its distinct rows: all 2^n are distinct, so
   a message function of Alice with fewer than 2^n values maps two inputs a != a' to one
   message, after which Bob's answer is the same for both, and b = a' \\ a (or a \\ a') makes
   exactly one of them disjoint. This is the exact answer to "is there a message map with 2^k
   values and a decoder solving DISJ_n?" (the minimum is the number of distinct rows), so it is a
   search over every head at once: for Theorem 4's instance Bob knows every token but Alice's,
   so any head (any Q, K, V, psi, any arithmetic) is such a protocol with Alice's message her
   token's query, key and value; below n bits none solves DISJ_n.

2. Match3 for standard attention (Theorem 7's reduction). `match3_instance(A, B)`: one query
   token x_0 = c, Alice's n tokens hold a_s = s + 1 for s in A (else a dummy), Bob's n tokens
   hold b_t = -(c + t + 1) for t in B (else a dummy); c, the dummies and M are chosen so that
   the only zero-sum triples through token 0 are (c, a_s, b_s). Then Match3(x)_0 = [A and B
   intersect] -- checked on all 4^n pairs with the task's own solver. For one layer with H heads,
   head h's output at token 0 is (N_A + N_B + own) / (D_A + D_B + own), where N_A, D_A (the
   exp-weighted sums over Alice's tokens) depend on A only: Alice's message is H (m_v + 1)
   numbers, H (m_v + 1) p bits when each partial sum is a p-bit number (the paper's model). By 1.,
   any layer with H (m_v + 1) p < n fails on some (A, B) among the 4^n; N = 2n + 1, so m p H must
   grow linearly in N. The counting is the proof; `layer_messages` and `witness_failure` exhibit
   it on concrete layers (a collision of Alice's messages, and the wrong bit found by running
   the layer on both inputs), and `indicator_layer` is a layer at exactly n bits that solves
   every pair, so the instance is tight at this size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np
import torch

from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.models.precision import round_to_bits
from attnlab.tasks import get_task

MAX_ENUMERATED = 10


def _check_size(n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_ENUMERATED:
        raise ValueError(
            f"the exhaustive check needs an int 1 <= n <= {MAX_ENUMERATED} (4^n input pairs), got {n!r}"
        )
    return int(n)


def all_subsets(n: int) -> np.ndarray:
    """Every subset of [n] as a 0/1 row: (2^n, n)."""
    n = _check_size(n)
    return ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(np.int64)


def disjointness_rows(n: int) -> dict[str, Any]:
    """The DISJ_n matrix, exhaustively: how many distinct rows (one-way messages needed)."""
    sets = all_subsets(n)
    matrix = (sets @ sets.T) == 0
    distinct = len(np.unique(matrix, axis=0))
    return {
        "n": n,
        "inputs": len(sets),
        "distinct_rows": int(distinct),
        "one_way_bits_needed": math.log2(distinct),
        "fooling_set_ok": bool(fooling_set_holds(sets)),
    }


def fooling_set_holds(sets: np.ndarray) -> bool:
    """(A, complement A) is disjoint for all A, and for A != A' one of (A, comp A'), (A', comp A)
    intersects: the classic fooling set of size 2^n, checked on every pair."""
    complement = 1 - sets
    diagonal_disjoint = bool(((sets * complement).sum(axis=1) == 0).all())
    cross = (sets @ complement.T) > 0
    either = cross | cross.T
    np.fill_diagonal(either, True)
    return diagonal_disjoint and bool(either.all())


@dataclass(frozen=True)
class Match3Instance:
    """Residues of the Match3 disjointness instance of size n (module doc, item 2)."""

    n: int
    M: int
    c: int
    alice_dummy: int
    bob_dummy: int

    @property
    def N(self) -> int:
        return 2 * self.n + 1

    def alice(self, s: int) -> int:
        return (s + 1) % self.M

    def bob(self, t: int) -> int:
        return (-(self.c + t + 1)) % self.M

    def sequence(self, A: np.ndarray, B: np.ndarray) -> np.ndarray:
        """x (N,) for subsets A, B given as 0/1 vectors of length n; token 0 is the query."""
        alice = np.where(A == 1, (np.arange(self.n) + 1) % self.M, self.alice_dummy)
        bob = np.where(B == 1, (-(self.c + np.arange(self.n) + 1)) % self.M, self.bob_dummy)
        return np.concatenate([[self.c], alice, bob]).astype(np.int64)


def _only_cross_triples(n: int, M: int, c: int, da: int, db: int) -> bool:
    values = [c, da, db] + [(s + 1) % M for s in range(n)] + [(-(c + t + 1)) % M for t in range(n)]
    if len(set(values)) != len(values):
        return False
    alice = {(s + 1) % M: s for s in range(n)}
    bob = {(-(c + t + 1)) % M: t for t in range(n)}
    for u, v in product(values, repeat=2):
        if (c + u + v) % M == 0:
            cross = (u in alice and v in bob and alice[u] == bob[v]) or (
                v in alice and u in bob and alice[v] == bob[u]
            )
            if not cross:
                return False
    return True


def match3_instance(n: int) -> Match3Instance:
    """The smallest (M, c, dummies) found, in a fixed scan order, whose only zero-sum triples
    through token 0 are the cross pairs (a_s, b_s)."""
    n = _check_size(n)
    for M in range(2 * n + 4, 64 * n + 64):
        for c in range(1, M):
            for da in range(M):
                for db in range(M):
                    if _only_cross_triples(n, M, c, da, db):
                        return Match3Instance(n, M, c, da, db)
    raise RuntimeError(
        f"no instance found for n={n}"
    )  # pragma: no cover - the scan always succeeds


def check_match3_reduction(instance: Match3Instance) -> dict[str, Any]:
    """Match3(x)_0 == [A and B intersect] on all 4^n pairs, with the task's own solver."""
    sets = all_subsets(instance.n)
    pairs = [(a, b) for a in range(len(sets)) for b in range(len(sets))]
    x = np.stack([instance.sequence(sets[a], sets[b]) for a, b in pairs])
    task = get_task("match3", N=instance.N, M=instance.M)
    bits = task.solve({"x": x})[:, 0]
    truth = np.array([bool((sets[a] * sets[b]).sum()) for a, b in pairs])
    return {
        "n": instance.n,
        "N": instance.N,
        "M": instance.M,
        "pairs": len(pairs),
        "reduction_exact": bool((bits.astype(bool) == truth).all()),
    }


def indicator_layer(
    instance: Match3Instance, value_dim: int | None = None, precision: int | None = None
) -> MultiHeadAttentionLayer:
    """One head, constant logits (uniform attention), value e_s for Alice's a_s, 2 e_t for Bob's
    b_t, 0 otherwise; psi: 1 iff some coordinate exceeds 2.5 / N. With value_dim = n it solves
    the instance (Alice's message: her indicator vector, n one-bit numbers). With value_dim < n
    only the first value_dim elements are visible, and it must fail."""
    n, N = instance.n, instance.N
    value_dim = n if value_dim is None else int(value_dim)
    if not 1 <= value_dim <= n:
        raise ValueError(f"value_dim must be in [1, n={n}], got {value_dim}")
    table = torch.zeros(instance.M, value_dim, dtype=torch.float64)
    for s in range(value_dim):
        table[instance.alice(s), s] = 1.0
        table[instance.bob(s), s] = 2.0

    def constant(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(*x.shape[:-1], 1, dtype=torch.float64)

    def value(x: torch.Tensor) -> torch.Tensor:
        return table[x[..., 0].round().long() % instance.M]

    def readout(attended: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        del tokens
        return (attended.amax(dim=-1) > 2.5 / N).to(attended.dtype)

    head = AttentionUnit(constant, constant, value, precision=precision)
    return MultiHeadAttentionLayer([head], output_map=readout, precision=precision)


def run_layer(layer: MultiHeadAttentionLayer, x: np.ndarray, rows: int = 4096) -> np.ndarray:
    """(B, N) bits of `layer` on residues x (B, N), `rows` sequences at a time (the layer's
    intermediates are (rows, N, width) arrays)."""
    tokens = torch.from_numpy(np.asarray(x, dtype=np.float64)[..., None])
    with torch.no_grad():
        return torch.cat([layer(tokens[i : i + rows]) for i in range(0, len(tokens), rows)]).numpy()


def layer_messages(
    layer: MultiHeadAttentionLayer, instance: Match3Instance, precision: int | None = None
) -> np.ndarray:
    """Alice's message for every A (with B empty: her sums do not depend on B): per head the
    exp-weighted value sum and weight sum over her tokens, relative to token 0's own logit, each
    rounded to `precision` bits (None: exact float64). Shape (2^n, H (m_v + 1))."""
    sets = all_subsets(instance.n)
    empty = np.zeros(instance.n, dtype=np.int64)
    x = torch.from_numpy(
        np.stack([instance.sequence(A, empty) for A in sets]).astype(np.float64)[..., None]
    )
    alice = slice(1, instance.n + 1)
    parts = []
    with torch.no_grad():
        embedded = layer.input_map(x)
        for head in layer.heads:
            queries, keys, values = head.projections(embedded)
            logits = round_to_bits(queries[:, :1] @ keys.transpose(-1, -2), head.precision)[
                :, 0
            ]  # (2^n, N)
            weights = torch.exp(logits - logits[:, :1])[:, alice]
            parts += [
                (weights[..., None] * values[:, alice]).sum(dim=1),
                weights.sum(dim=1, keepdim=True),
            ]
    return round_to_bits(torch.cat(parts, dim=-1), precision).numpy()


def witness_failure(
    layer: MultiHeadAttentionLayer, instance: Match3Instance, precision: int | None = None
) -> dict[str, Any] | None:
    """A collision of Alice's messages, the fooling-set B, and the layer's bits on both inputs
    (run through the layer): None when all 2^n messages differ."""
    sets = all_subsets(instance.n)
    messages = layer_messages(layer, instance, precision)
    _, first, inverse = np.unique(messages, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    collided = np.flatnonzero(first[inverse] != np.arange(len(sets)))
    if not len(collided):
        return None
    A, A_prime = sets[collided[0]], sets[first[inverse[collided[0]]]]
    B = 1 - A_prime if (A * (1 - A_prime)).sum() > 0 else 1 - A
    x = np.stack([instance.sequence(A, B), instance.sequence(A_prime, B)])
    bits = run_layer(layer, x)[:, 0]
    truth = get_task("match3", N=instance.N, M=instance.M).solve({"x": x})[:, 0]
    return {
        "A": A.tolist(),
        "A_prime": A_prime.tolist(),
        "B": B.tolist(),
        "layer_bits": bits.astype(int).tolist(),
        "true_bits": truth.astype(int).tolist(),
        "wrong": bool((bits != truth).any()),
    }


def exhaustive_layer_errors(layer: MultiHeadAttentionLayer, instance: Match3Instance) -> int:
    """Wrong bits at token 0 over all 4^n pairs (A, B), running the layer."""
    sets = all_subsets(instance.n)
    x = np.stack([instance.sequence(A, B) for A in sets for B in sets])
    truth = get_task("match3", N=instance.N, M=instance.M).solve({"x": x})[:, 0]
    return int((run_layer(layer, x)[:, 0] != truth).sum())
