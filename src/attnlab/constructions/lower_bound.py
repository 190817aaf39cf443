"""Theorem 4 made visible: the set-disjointness instance, and where constructions stop working.

Theorem 4 (Sanford, Hsu, Telgarsky 2023): for large q, N >= 2q + 1 and any d' >= 1, if m p <= c q
no one-layer, one-head attention model 1/(2q)-approximates qSA. The proof embeds set
disjointness DISJ_q (Alice holds a in {0,1}^q, Bob b in {0,1}^q; are they disjoint?) in one qSA
input with N = 2q + 1:

- positions 2k and 2k+1 are the "0-slot" and "1-slot" of pair k; position 2q is Alice's token;
- Alice's pointer set is y_{2q} = {2k + a_k : k < q} (the 1-slot of pair k iff a_k = 1);
- Bob's data: z_{2k+1} = +e_1 if b_k = 1, every other z_j = -e_1 (Alice's z is -e_1 too);
- then qSA_{2q} = (2 |a & b| / q - 1) e_1: -e_1 iff a and b are disjoint, and at least
  (-1 + 2/q) e_1 otherwise, so any 1/(2q)-approximation decides DISJ at Alice's token.
Bob knows every token but Alice's, so Alice's query, key and value (m numbers of p bits each)
are a protocol for DISJ, which needs Omega(q) bits: m p >= c q.

What is measured here. For the Theorem-2 construction on this instance, with key width m' and
precision p, over ALL 2^q inputs a (q <= 16):
- `worst_error`: the exact worst case over all 2^q Bob inputs b of the error at Alice's token.
  With w the attention weights of a, the output's e_1 coordinate is -1 + 2 sum_{k: b_k=1} w_{2k+1},
  so the error is 2 |sum_{k: b_k = 1} d_k| with d_k = w_{2k+1} - a_k / q, maximised over b by
  taking all positive or all negative d_k;
- `wrong_decisions`: the fraction of the 4^q pairs (a, b) the output decides wrongly, with
  "disjoint" read as e_1-coordinate < -1 + 1/q;
- `distinct_messages`: how many different rounded queries Alice sends over the 2^q inputs a; a
  collision a != a' is a `witness`: both give the same output for every b, but b = a' \\ a (or
  a \\ a') makes one pair disjoint and the other not, so one of them has error >= 1/q.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from attnlab.constructions.qsa_certificates import (
    CertificateQSA,
    certificate_weight_gaps,
    certificates,
)
from attnlab.models.precision import round_to_bits
from attnlab.tasks import QSparseAveraging

MAX_ENUMERATED_Q = 16


def _check_bits(name: str, bits) -> np.ndarray:
    bits = np.asarray(bits)
    if bits.ndim != 1 or not np.isin(bits, (0, 1)).all():
        raise ValueError(f"{name} must be a 1-d 0/1 vector, got {bits!r}")
    return bits.astype(np.int64)


def alice_pointers(a) -> np.ndarray:
    """Alice's pointer set {2k + a_k}: (q,) sorted int64."""
    a = _check_bits("a", a)
    return 2 * np.arange(len(a)) + a


def disjointness_instance(a, b, N: int | None = None, d_prime: int = 1) -> dict[str, np.ndarray]:
    """The qSA inputs (one sequence) that embed DISJ(a, b); Alice's token is position 2q."""
    a, b = _check_bits("a", a), _check_bits("b", b)
    q = len(a)
    if len(b) != q or q < 1:
        raise ValueError(f"a and b must have the same length q >= 1, got {len(a)} and {len(b)}")
    N = 2 * q + 1 if N is None else N
    if N < 2 * q + 1:
        raise ValueError(f"the instance needs N >= 2q + 1 = {2 * q + 1} positions, got N={N}")
    z = np.zeros((1, N, d_prime))
    z[0, :, 0] = -1.0
    z[0, 2 * np.arange(q) + 1, 0] = np.where(b == 1, 1.0, -1.0)
    y = np.tile(np.arange(q, dtype=np.int64), (1, N, 1))  # Bob's tokens point anywhere; fixed here
    y[0, 2 * q] = alice_pointers(a)
    return {"z": z, "y": y}


def disjoint_from_output(output_at_alice: np.ndarray, q: int) -> np.ndarray:
    """Decide DISJ from Alice's output: disjoint iff its e_1 coordinate is below -1 + 1/q."""
    return np.asarray(output_at_alice)[..., 0] < -1.0 + 1.0 / q


def all_bit_vectors(q: int) -> np.ndarray:
    if not 1 <= q <= MAX_ENUMERATED_Q:
        raise ValueError(f"enumerating {{0,1}}^q needs 1 <= q <= {MAX_ENUMERATED_Q}, got q={q}")
    return ((np.arange(2**q)[:, None] >> np.arange(q)[None, :]) & 1).astype(np.int64)


@dataclass
class DisjointnessMeasurement:
    """The Theorem-2 head with key width m' and precision p on every DISJ_q instance."""

    q: int
    key_dim: int
    precision: int
    query_bits: int
    worst_error: float
    threshold: float
    wrong_decisions: float
    distinct_messages: int
    inputs: int
    witness: dict[str, Any] | None

    @property
    def solves(self) -> bool:
        return self.worst_error <= self.threshold

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "solves": self.solves}


def pair_code_keys(q: int, key_dim: int | None = None) -> np.ndarray:
    """Keys made for this instance: -e_k for the 0-slot and +e_k for the 1-slot of pair k, 0 for
    Alice. The certificate of Alice's set is then the sign vector 2a - 1 (m' = q numbers of one
    bit each): the instance is solved with m p = q, so Theorem 4 is tight on it up to constants.
    With key_dim < q only the first key_dim pairs get a coordinate; Alice's query then carries
    key_dim one-bit numbers, fewer than q bits, and collisions (witnesses) must appear."""
    key_dim = q if key_dim is None else min(key_dim, q)
    keys = np.zeros((key_dim, 2 * q + 1))
    keys[np.arange(key_dim), 2 * np.arange(key_dim)] = -1.0
    keys[np.arange(key_dim), 2 * np.arange(key_dim) + 1] = 1.0
    return keys


def measure_disjointness(
    q: int, key_dim: int, precision: int, seed: int = 0, design: str = "random"
) -> DisjointnessMeasurement:
    """Run a certificate head (N = 2q + 1, eps = 1/(2q)) on all DISJ_q instances; see module doc.

    design "random": the Theorem-2 head with random sign keys of width key_dim; "pair-code": the
    instance-specific keys of `pair_code_keys` (key_dim <= q).
    """
    N, eps = 2 * q + 1, 1.0 / (2 * q)
    if design == "pair-code":
        key_dim = min(key_dim, q)
    elif design != "random":
        raise ValueError(f"design must be 'random' or 'pair-code', got {design!r}")
    construction = CertificateQSA.build(N, q, 1, eps, key_dim, precision, seed)
    if design == "pair-code":
        construction.keys = pair_code_keys(q, key_dim)
    a_all = all_bit_vectors(q)
    sets = 2 * np.arange(q)[None, :] + a_all
    gaps = certificate_weight_gaps(
        construction.keys, sets, construction.beta, precision
    )  # w - 1_S/q
    d = gaps[:, 2 * np.arange(q) + 1]  # weight on 1-slots minus a_k / q
    worst = 2.0 * np.maximum(np.clip(d, 0, None).sum(axis=1), np.clip(-d, 0, None).sum(axis=1))
    # every (a, b): output e_1 coordinate -1 + 2 sum_{b_k=1} w_{2k+1}
    weights_one_slots = d + a_all / q
    b_all = a_all.T.astype(np.float64)
    wrong_count = 0
    rows_per_block = max(1, (1 << 22) >> q)  # keeps each (a, b) block at <= 4M entries
    for start in range(0, len(a_all), rows_per_block):
        output = -1.0 + 2.0 * weights_one_slots[start : start + rows_per_block] @ b_all
        truly_disjoint = (a_all[start : start + rows_per_block] @ b_all) == 0
        wrong_count += int(np.count_nonzero((output < -1.0 + 1.0 / q) != truly_disjoint))
    wrong = wrong_count / float(len(a_all)) ** 2
    queries = round_to_bits(
        construction.beta
        * certificates(torch.from_numpy(construction.keys), torch.from_numpy(sets)),
        precision,
    ).numpy()
    _, first, inverse = np.unique(queries, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    witness = None
    collided = np.flatnonzero(first[inverse] != np.arange(len(a_all)))
    if len(collided):
        other, this = a_all[first[inverse[collided[0]]]], a_all[collided[0]]
        extra = np.where((this == 1) & (other == 0))[0]
        b = np.zeros(q, dtype=np.int64)
        b[extra[:1] if len(extra) else np.where((other == 1) & (this == 0))[0][:1]] = 1
        witness = {
            "a": this.tolist(),
            "a_prime": other.tolist(),
            "b": b.tolist(),
            "disjoint": [bool(this @ b == 0), bool(other @ b == 0)],
            "note": "a and a' send the same rounded query, so the head's outputs at Alice's "
            "token agree for every b, yet DISJ(a, b) != DISJ(a', b)",
        }
    return DisjointnessMeasurement(
        q=q,
        key_dim=key_dim,
        precision=precision,
        query_bits=key_dim * precision,
        worst_error=float(worst.max()),
        threshold=eps,
        wrong_decisions=wrong,
        distinct_messages=int(len(first)),
        inputs=int(len(a_all)),
        witness=witness,
    )


def check_instance(a, b) -> float:
    """The exact qSA value at Alice's token (e_1 coordinate), from the task's own solver."""
    a = _check_bits("a", a)
    inputs = disjointness_instance(a, b)
    task = QSparseAveraging(2 * len(a) + 1, len(a), 1)
    return float(task.solve(inputs)[0, 2 * len(a), 0])


def smallest_query_bits(
    q: int, key_dims: list[int], precisions: list[int], seed: int = 0, design: str = "random"
) -> dict[str, Any]:
    """Over a grid of (m', p), the smallest m' p at which the head solves every DISJ_q instance."""
    passing = [
        (k * p, k, p)
        for k in key_dims
        for p in precisions
        if measure_disjointness(q, k, p, seed, design).solves
    ]
    if not passing:
        return {"q": q, "query_bits": math.inf, "key_dim": None, "precision": None}
    bits, k, p = min(passing)
    return {"q": q, "query_bits": bits, "key_dim": k, "precision": p}
