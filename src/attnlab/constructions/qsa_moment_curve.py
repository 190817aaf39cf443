"""qSA with one head at width 2q + d' and high precision: Theorem 3 (moment curve / cyclic polytope).

- keys: token j's key is (t_j, t_j^2, ..., t_j^{2q}), with t_j = -1 + 2j/(N-1) equally spaced;
- queries: token i's query is beta times the coefficients (degree 1..2q) of
  P_S(t) = -prod_{l in S} (t - t_l)^2 for S = y_i; the constant coefficient is the same for
  every key and cancels in the softmax, so the key width is 2q;
- values: z_j. The width m reported is 2q + d'.
The logit of key j is beta * (P_S(t_j) - P_S(0)): equal for every j in S (P_S vanishes there) and
lower by beta * prod_l (t_j - t_l)^2 for j outside S. The smallest such gap over all sets is
exactly gap_min = (floor(q/2)! ceil(q/2)! h^q)^2, h = 2/(N-1) (a set packed on both sides of j),
so beta = ln(2N / (q eps)) / gap_min gives error <= eps at infinite precision. gap_min shrinks
like N^{-2q}: beta, and with it the bits p the queries need, grow like 2q log2 N. This is why
Theorem 3 is the infinite-precision result.

Finite precision is simulated exactly: queries, keys and logits are rounded to p significant
bits (attnlab.constructions.exact_bits, the rule of round_to_bits extended to any p), logits are
computed with Python integers from the rounded numbers, and only keys that can carry weight are evaluated: a key whose exact logit lies
below the on-support level by more than L + 2*Delta (Delta a rigorous bound on what rounding
moves a logit, L = 50 + ln N) is dropped, and the mass it could carry (<= N e^{-L}) is added to
the reported error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from itertools import combinations
from typing import Any

import numpy as np
import torch

from attnlab.constructions.exact_bits import round_rational, to_float
from attnlab.constructions.verification import (
    ConstructionFailed,
    Verification,
    matching_task,
    merge_scores,
    smallest_passing,
    sorted_sets,
)
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer
from attnlab.tasks import Batch, QSparseAveraging, as_generator, distinct_indices

_NEGLIGIBLE_LOGIT = 50.0  # e^-50 ~ 2e-22 per dropped key


def _denominator(N: int) -> int:
    return max(N - 1, 1)


def curve_points(N: int) -> np.ndarray:
    """The integers s_j = 2j - (N-1); t_j = s_j / (N-1) in [-1, 1]."""
    return 2 * np.arange(N, dtype=np.int64) - (N - 1)


def log_gap_floor(N: int, q: int) -> float:
    """ln of the smallest off-support gap prod_l (t_j - t_l)^2 over all q-sets S and j not in S."""
    if N <= q:
        return 0.0
    h = 2.0 / _denominator(N)
    return 2.0 * (math.lgamma(q // 2 + 1) + math.lgamma((q + 1) // 2 + 1) + q * math.log(h))


def moment_temperature(N: int, q: int, eps: float) -> float:
    """beta = ln(2N / (q eps)) / gap_min: the leak outside S is then <= eps/2 in the worst case."""
    return math.log(2.0 * N / (q * eps)) * math.exp(-log_gap_floor(N, q))


def squared_product_coefficients(roots: list[int]) -> list[int]:
    """Integer coefficients a_0..a_{2q} (lowest first) of prod_l (s - r_l)^2."""
    coefficients = [1]
    for root in roots:
        for _ in range(2):
            shifted = [0] + coefficients  # s * poly
            coefficients = [
                shifted[k] - root * (coefficients[k] if k < len(coefficients) else 0)
                for k in range(len(shifted))
            ]
    return coefficients


@dataclass
class MomentCurveQSA:
    """A Theorem-3 head for qSA(N, q, d') at `precision` bits (None: exact arithmetic)."""

    N: int
    q: int
    d_prime: int
    eps: float
    precision: int | None
    beta: float
    search: dict[int, float] = field(default_factory=dict)
    _rounded_keys: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def build(
        cls,
        N: int,
        q: int,
        d_prime: int = 4,
        eps: float | None = None,
        precision: int | None = None,
        beta: float | None = None,
    ) -> MomentCurveQSA:
        QSparseAveraging(N, q, d_prime)
        eps = 1.0 / (2 * q) if eps is None else float(eps)
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if precision is not None and precision < 2:
            raise ValueError(f"precision must be >= 2 bits or None, got {precision}")
        beta = moment_temperature(N, q, eps) if beta is None else float(beta)
        return cls(N, q, d_prime, eps, precision, beta)

    @property
    def key_dim(self) -> int:
        return 2 * self.q

    @property
    def m(self) -> int:
        return self.key_dim + self.d_prime

    # --- exact queries and keys ----------------------------------------------------------------
    def _query_fractions(self, index_set) -> list[Fraction]:
        """beta * (coefficients 1..2q of P_S in t), exactly, then rounded to p bits."""
        D = _denominator(self.N)
        s = curve_points(self.N)
        a = squared_product_coefficients([int(s[l]) for l in index_set])
        beta = Fraction(self.beta)
        exact = [-beta * a[k] * Fraction(D) ** (k - 2 * self.q) for k in range(1, 2 * self.q + 1)]
        return (
            exact if self.precision is None else [round_rational(v, self.precision) for v in exact]
        )

    def _keys_scaled(self) -> tuple[np.ndarray, int]:
        """Rounded keys as integers KI (N, 2q) (object) with K = KI / 2^F."""
        if self._rounded_keys is None:
            D, s = _denominator(self.N), curve_points(self.N)
            rounded = [
                [
                    round_rational(Fraction(int(sj) ** k, D**k), self.precision)
                    for k in range(1, 2 * self.q + 1)
                ]
                for sj in s
            ]
            scale = max(v.denominator for row in rounded for v in row).bit_length() - 1
            ints = np.array(
                [[v.numerator * ((1 << scale) // v.denominator) for v in row] for row in rounded],
                dtype=object,
            )
            self._rounded_keys = (ints, scale)
        return self._rounded_keys

    def _relative_logits(self, sets: np.ndarray) -> np.ndarray:
        """Exact-arithmetic logits minus the on-support level, in float64 product form: (k, N)."""
        t = curve_points(self.N) / _denominator(self.N)
        logs = np.zeros((len(sets), self.N))
        with np.errstate(divide="ignore"):
            for c in range(self.q):
                logs += 2.0 * np.log(np.abs(t[None, :] - t[sets[:, c]][:, None]))
        return -self.beta * np.exp(logs)

    def _rounding_slack(self, index_set) -> float:
        """Rigorous bound on how far p-bit rounding of query, keys and logit moves any logit:
        each product moves by <= 3 * 2^-p |Q_k K_jk|, the rounded logit by 2^-p of its size."""
        if self.precision is None:
            return 0.0
        D, s = _denominator(self.N), curve_points(self.N)
        a = squared_product_coefficients([int(s[l]) for l in index_set])
        total = sum(
            abs(Fraction(a[k]) * Fraction(D) ** (k - 2 * self.q)) for k in range(1, 2 * self.q + 1)
        )
        return 4.0 * 2.0**-self.precision * self.beta * to_float(total)

    def attention(self, index_set) -> tuple[np.ndarray, np.ndarray, float]:
        """(candidate keys, their weights, bound on the mass of the dropped keys) for one set."""
        index_set = [int(l) for l in index_set]
        relative = self._relative_logits(np.array([index_set]))[0]
        slack = self._rounding_slack(index_set)
        cut = _NEGLIGIBLE_LOGIT + math.log(self.N)
        candidates = np.flatnonzero(relative >= -(cut + 2.0 * slack))
        dropped_mass = (self.N - len(candidates)) * math.exp(-cut)
        if self.precision is None:
            logits = relative[candidates]
        else:
            keys, key_scale = self._keys_scaled()
            queries = self._query_fractions(index_set)
            query_scale = max(v.denominator for v in queries).bit_length() - 1
            query_ints = np.array(
                [v.numerator * ((1 << query_scale) // v.denominator) for v in queries], dtype=object
            )
            denominator = 1 << (key_scale + query_scale)
            rounded = [
                round_rational(Fraction(int(v), denominator), self.precision)
                for v in keys[candidates].dot(query_ints)
            ]
            top = max(rounded)
            logits = np.array([to_float(v - top) for v in rounded])
        weights = np.exp(logits - logits.max())
        return candidates, weights / weights.sum(), dropped_mass

    def worst_case_errors(self, sets: np.ndarray) -> np.ndarray:
        """sup over z in the unit ball of the error at a token pointing to S, for each set: (k,)."""
        errors = []
        for index_set in np.asarray(sets).reshape(-1, self.q):
            candidates, weights, dropped = self.attention(index_set)
            on_support = np.isin(candidates, index_set)
            errors.append(np.abs(weights - on_support / self.q).sum() + 2.0 * dropped)
        return np.array(errors)

    def adversarial_sets(self, rng: np.random.Generator | None = None, **search) -> np.ndarray:
        """The sets of `adversarial_search`, worst first."""
        return self.adversarial_search(rng, **search)[0]

    def adversarial_search(
        self,
        rng: np.random.Generator | None = None,
        limit: int = 5000,
        random_starts: int = 32,
        rounds: int = 3,
        keep: int = 12,
        stop_above: float = math.inf,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Every q-set when there are at most `limit`. Otherwise a search at this precision:
        start from the sets that are worst by construction (blocks packed on both sides of a gap,
        which attain gap_min, at the left end, the middle and the right end; blocks at the two
        ends, which have the largest query coefficients and so the most rounding; half the set
        at each end) and `random_starts` uniform sets, then hill-climb: for `rounds` rounds,
        move each element of the `keep` worst sets by -3..3 positions and keep what is worse.
        The climb stops early once some set's error exceeds `stop_above` (a search only needs to
        know that the head fails). Returns (sets, their worst-case errors), worst first."""
        N, q = self.N, self.q
        if math.comb(N, q) <= limit:
            pool = np.array(list(combinations(range(N), q)), dtype=np.int64).reshape(-1, q)
            errors = self.worst_case_errors(pool)
            order = np.argsort(errors)[::-1]
            return pool[order], errors[order]
        rng = np.random.default_rng(0) if rng is None else rng
        left, right = (q + 1) // 2, q // 2
        starts = []
        for gap in (left, N // 2, N - 1 - right):
            starts.append(list(range(gap - left, gap)) + list(range(gap + 1, gap + 1 + right)))
        starts += [
            list(range(q)),
            list(range(N - q, N)),
            list(range(left)) + list(range(N - right, N)),
        ]
        pool = np.unique(
            np.concatenate(
                [sorted_sets(np.array(starts)), distinct_indices(rng, (random_starts,), q, N)]
            ),
            axis=0,
        )
        errors = self.worst_case_errors(pool)
        for _ in range(rounds):
            if errors.max() > stop_above:
                break
            moved = []
            for index_set in pool[np.argsort(errors)[::-1][:keep]]:
                for c in range(q):
                    for delta in (-3, -2, -1, 1, 2, 3):
                        candidate = index_set.copy()
                        candidate[c] += delta
                        if 0 <= candidate[c] < N and len(set(candidate.tolist())) == q:
                            moved.append(np.sort(candidate))
            fresh = np.unique(np.array(moved), axis=0)
            fresh = fresh[~(fresh[:, None, :] == pool[None, :, :]).all(-1).any(-1)]
            if len(fresh) == 0:
                break
            pool, errors = (
                np.concatenate([pool, fresh]),
                np.concatenate([errors, self.worst_case_errors(fresh)]),
            )
        order = np.argsort(errors)[::-1]
        return pool[order], errors[order]

    # --- the model, verification ---------------------------------------------------------------
    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The head's output on raw qSA inputs (exact arithmetic on the rounded numbers)."""
        z, y = np.asarray(inputs["z"], dtype=np.float64), np.asarray(inputs["y"])
        if self.precision is not None:
            z = np.vectorize(
                lambda v: to_float(round_rational(Fraction(float(v)), self.precision))
            )(z)
        out = np.zeros(z.shape)
        for b in range(z.shape[0]):
            for i in range(self.N):
                candidates, weights, _ = self.attention(y[b, i])
                out[b, i] = weights @ z[b, candidates]
        return out

    def model(self) -> MultiHeadAttentionLayer:
        """The same head as a float64 AttentionUnit (tokens (z_i, y_i, i)); faithful only while
        float64 resolves the gaps (small N and q), since monomial logits cancel catastrophically."""
        d, q = self.d_prime, self.q
        t = torch.from_numpy(curve_points(self.N) / _denominator(self.N))
        powers = torch.arange(1, 2 * q + 1, dtype=torch.float64)

        def query(x: torch.Tensor) -> torch.Tensor:
            roots = t[x[..., d : d + q].round().long()]  # (..., q)
            poly = torch.ones(*roots.shape[:-1], 1, dtype=torch.float64)
            for c in range(q):
                for _ in range(2):  # multiply by (t - root)
                    r = roots[..., c : c + 1]
                    poly = torch.cat([-r * poly, torch.zeros_like(r)], -1) + torch.cat(
                        [torch.zeros_like(r), poly], -1
                    )
            return -self.beta * poly[..., 1:]

        def key(x: torch.Tensor) -> torch.Tensor:
            return t[x[..., -1].round().long()][..., None] ** powers

        head = AttentionUnit(query, key, lambda x: x[..., :d], precision=None, query_chunk=256)
        return MultiHeadAttentionLayer([head])

    def task(self) -> QSparseAveraging:
        return QSparseAveraging(self.N, self.q, self.d_prime)

    def verify(
        self,
        task: QSparseAveraging | None = None,
        rng: int | np.random.Generator | None = 0,
        n: int = 2,
    ) -> Verification:
        """Sampled sequences plus, per adversarial set, a sequence with the z worst for it."""
        task = matching_task(task, self.task())
        rng = as_generator(rng)
        batch = task.sample(rng, n)
        random_score = task.score(batch, self.predict(batch.inputs))
        sets, errors = self.adversarial_search(rng)
        worst = sets[:4]
        batches = []
        for index_set in worst:
            candidates, weights, _ = self.attention(index_set)
            gap = weights - np.isin(candidates, index_set) / self.q
            z = np.zeros((1, self.N, self.d_prime))
            z[0, :, 0] = 1.0
            z[0, candidates, 0] = np.where(gap < 0, -1.0, 1.0)
            y = distinct_indices(rng, (1, self.N), self.q, self.N)
            y[0, 0] = index_set
            inputs = {"z": z, "y": y}
            batches.append(Batch(inputs, task.solve(inputs)))
        scores = [task.score(b, self.predict(b.inputs)) for b in batches]
        return Verification(
            task=task.name,
            params=task.params,
            threshold=self.eps,
            random=random_score,
            adversarial=merge_scores(scores, [1] * len(batches)),
            n_random=n,
            n_adversarial=len(batches),
            notes={
                "adversarial_sets": int(len(sets)),
                "adversarial_sup_over_z": float(errors.max()),
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "theorem": 3,
            "N": self.N,
            "q": self.q,
            "d_prime": self.d_prime,
            "eps": self.eps,
            "m": self.m,
            "key_dim": self.key_dim,
            "p": self.precision,
            "beta": self.beta,
            "search": {str(k): v for k, v in sorted(self.search.items())},
        }


def smallest_moment_curve_precision(
    N: int,
    q: int,
    d_prime: int = 4,
    eps: float | None = None,
    random_sets: int = 64,
    seed: int = 0,
    limit: int = 1024,
) -> MomentCurveQSA:
    """The Theorem-3 head at the smallest precision p the search verifies: worst case over z
    <= eps on `random_sets` uniform sets plus the adversarial sets found at that p."""
    exact = MomentCurveQSA.build(N, q, d_prime, eps)
    sets = distinct_indices(np.random.default_rng(seed), (random_sets,), q, N)

    def error_at(bits: int) -> float:
        candidate = MomentCurveQSA.build(N, q, d_prime, exact.eps, bits)
        random_error = float(candidate.worst_case_errors(sets).max())
        if random_error > exact.eps:
            return random_error
        _, errors = candidate.adversarial_search(
            np.random.default_rng([seed, bits]), stop_above=exact.eps
        )
        return max(random_error, float(errors[0]))

    try:
        bits, history = smallest_passing(
            error_at, exact.eps, start=4, limit=limit, what="precision p"
        )
    except ConstructionFailed as exc:
        raise ConstructionFailed(f"moment curve N={N}, q={q}: {exc}") from None
    found = MomentCurveQSA.build(N, q, d_prime, exact.eps, bits)
    found.search = history
    return found
