"""qSA with one attention head at width O(d' + q log N): Theorem 2 of Sanford, Hsu, Telgarsky (2023).

The construction (dual certificates from compressed sensing):
- keys: token j's key is u_j, column j of a random sign matrix U in {+-1/sqrt(m')}^{m' x N}
  (for m' >= N the one-hot code, which needs no randomness, so no search goes beyond m' = N);
- queries: token i's query is beta * w_S for S = y_i, where w_S is a dual certificate of S:
  <w_S, u_j> = 1 exactly for j in S, and as small as possible off S. Two programs:
  "softmax-leak" (default; attnlab.constructions.qsa_optimised): the w minimising the softmax
  mass outside S at this beta, i.e. the worst-case error itself; "least-squares" (the baseline):
  w_S = U_S (U_S^T U_S)^{-1} 1_q, with nothing bounding the off-set scores;
- values: z_j; the output map reads the d' value coordinates.
The weights are exactly uniform on S; the error is the softmax mass leaking outside S, which the
temperature beta = 2 ln(2N / (q eps)) keeps below eps when every off-support <w_S, u_j> <= 1/2.

The width m reported is m' + d' (query/key coordinates and value coordinates side by side).
Precision p rounds queries, keys, logits, values and outputs to p significant bits
(see attnlab.models.attention_unit).

Worst case over z, exactly. For one index set S with attention weights a, the error at that
token is ||sum_j (a_j - 1[j in S]/q) z_j||_2, and its supremum over z in the unit ball is
sum_j |a_j - 1[j in S]/q|, reached at z_j = sign(a_j - 1[j in S]/q) e_1. `worst_case_errors`
computes this for any list of sets, so a verification certifies the worst z for every set it
tries, and the adversary only has to search over index sets. The adversary attacks the program
the head uses: for a target key u_t it starts from the q-set (among keys most correlated with
u_t) greedily built to maximise the least-squares score <w_S, u_t>, then swaps members by local
search to maximise the head's own worst-case error (qsa_optimised.local_search_sets).

The width search (`smallest_certificate_qsa`) fits m' on one sample of random and adversarial
sets and then judges it on samples it did not fit (fresh random sets, an adversary with fresh
targets), widening by 10% until a held-out sample passes; `verified_certificate_qsa` adds the
end-to-end verification and widens again if that fails, so the width it reports passed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.constructions.qsa_optimised import (
    DEFAULT_ITERATIONS,
    SCREEN_ITERATIONS,
    leak_certificates,
    least_squares_certificates,
    local_search_sets,
)
from attnlab.constructions.verification import (
    Verification,
    matching_task,
    merge_scores,
    sorted_sets,
)
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer, stable_softmax
from attnlab.models.precision import round_to_bits
from attnlab.tasks import Batch, QSparseAveraging, as_generator, distinct_indices

CERTIFICATES = ("softmax-leak", "least-squares")
_SET_CHUNK = 4096
_KEY_BLOCK = 64

certificates = least_squares_certificates  # the baseline; other modules build on it


def certificate_temperature(N: int, q: int, eps: float) -> float:
    """beta = 2 ln(2N / (q eps)): leak <= 2 N e^{-beta/2} / q <= eps when off-support scores <= 1/2."""
    return 2.0 * math.log(2.0 * N / (q * eps))


def certificate_precision(N: int, q: int, eps: float) -> int:
    """Bits p with beta * sqrt(q) * 2^-p <= eps / 4: rounding then moves on-support scores by at
    most ~eps/4, of order log(q log N / eps) as in Theorem 2."""
    return int(math.ceil(math.log2(4.0 * certificate_temperature(N, q, eps) * math.sqrt(q) / eps)))


def random_sign_keys(key_dim: int, N: int, seed: int) -> np.ndarray:
    """U in {+-1/sqrt(key_dim)}^{key_dim x N}. Rows come in blocks of 64 drawn from (seed, block),
    so the keys of width m' are the first m' rows of those of any larger width: the search over
    m' compares nested designs, not unrelated draws."""
    blocks = [
        np.random.default_rng([seed, block]).choice(np.array([-1.0, 1.0]), size=(_KEY_BLOCK, N))
        for block in range(-(-key_dim // _KEY_BLOCK))
    ]
    return np.concatenate(blocks)[:key_dim] / math.sqrt(key_dim)


def certificate_keys(key_dim: int, N: int, seed: int) -> np.ndarray:
    """The keys of the construction: random signs while key_dim < N; from key_dim >= N on, the
    one-hot code (e_j padded with zeros), whose certificates score exactly 0 off the set, so a
    search over m' always ends at m' <= N."""
    if key_dim < N:
        return random_sign_keys(key_dim, N, seed)
    return np.eye(key_dim, N)


def check_certificate(certificate: str) -> str:
    if certificate not in CERTIFICATES:
        raise ValueError(
            f"certificate must be one of {', '.join(CERTIFICATES)}, got {certificate!r}"
        )
    return certificate


def certificate_vectors(
    keys: torch.Tensor,
    sets: torch.Tensor,
    beta: float,
    certificate: str,
    iterations: int = DEFAULT_ITERATIONS,
) -> torch.Tensor:
    """The certificate w_S of every set (..., q) under the named program: (..., m')."""
    if check_certificate(certificate) == "least-squares":
        return least_squares_certificates(keys, sets)
    return leak_certificates(keys, sets, beta, iterations)


def certificate_weight_gaps(
    keys: np.ndarray,
    sets: np.ndarray,
    beta: float,
    precision: int | None,
    certificate: str = "least-squares",
    iterations: int = DEFAULT_ITERATIONS,
) -> np.ndarray:
    """a - 1_S/|S| for the attention weights a of a certificate query on each set: (k, N).

    All sets have one size s = sets.shape[1]; queries, keys and logits are rounded to `precision`
    bits as in the attention unit. The l1 norm of a row is the worst case over z of the error.
    """
    sets = sorted_sets(sets)
    key_tensor = torch.from_numpy(keys)
    vectors = certificate_vectors(key_tensor, torch.from_numpy(sets), beta, certificate, iterations)
    queries = round_to_bits(beta * vectors, precision)
    logits = round_to_bits(queries @ round_to_bits(key_tensor, precision), precision)
    gap = stable_softmax(logits).numpy()
    gap[np.arange(len(sets))[:, None], sets] -= 1.0 / sets.shape[1]
    return gap


def greedy_least_squares_sets(keys: np.ndarray, targets: np.ndarray, q: int) -> np.ndarray:
    """For each target t, the q-set S (from the 4q keys most correlated with u_t, never t) built
    greedily to maximise the least-squares score <w_S, u_t>: (len(targets), q) sorted."""
    N = keys.shape[1]
    key_tensor = torch.from_numpy(keys)
    chosen = torch.from_numpy(np.asarray(targets, dtype=np.int64))
    correlation = key_tensor[:, chosen].T @ key_tensor  # (T, N)
    correlation[torch.arange(len(chosen)), chosen] = -math.inf
    pool = torch.topk(correlation, k=min(4 * q, N - 1), dim=1).indices  # (T, P)
    target_keys = key_tensor.T[chosen]  # (T, m')
    current = pool[:, :0]
    for _ in range(q):
        taken = (pool[:, :, None] == current[:, None, :]).any(dim=-1)  # (T, P)
        trial = torch.cat(
            [current[:, None, :].expand(-1, pool.shape[1], -1), pool[:, :, None]], dim=-1
        )
        score = (least_squares_certificates(key_tensor, trial) * target_keys[:, None, :]).sum(
            dim=-1
        )
        score[taken] = -math.inf
        best = score.argmax(dim=1)
        current = trial[torch.arange(len(trial)), best]
    return sorted_sets(current.numpy())


@dataclass
class CertificateQSA:
    """A Theorem-2 head for qSA(N, q, d'), fixed by its key width, precision, seed and program."""

    N: int
    q: int
    d_prime: int
    eps: float
    key_dim: int
    precision: int | None
    beta: float
    seed: int
    keys: np.ndarray = field(repr=False)
    certificate: str = "softmax-leak"
    iterations: int = DEFAULT_ITERATIONS
    search: dict[int, float] = field(default_factory=dict)
    holdout: list[dict[str, float]] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        N: int,
        q: int,
        d_prime: int,
        eps: float,
        key_dim: int,
        precision: int | None = None,
        seed: int = 0,
        beta: float | None = None,
        certificate: str = "softmax-leak",
        iterations: int = DEFAULT_ITERATIONS,
    ) -> CertificateQSA:
        QSparseAveraging(N, q, d_prime)  # validates N, q, d'
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if key_dim < 1:
            raise ValueError(f"key_dim must be >= 1, got {key_dim}")
        beta = certificate_temperature(N, q, eps) if beta is None else float(beta)
        return cls(
            N,
            q,
            d_prime,
            float(eps),
            int(key_dim),
            precision,
            beta,
            int(seed),
            certificate_keys(key_dim, N, seed),
            check_certificate(certificate),
            int(iterations),
        )

    @property
    def m(self) -> int:
        return self.key_dim + self.d_prime

    def vectors(self, sets: torch.Tensor, iterations: int | None = None) -> torch.Tensor:
        return certificate_vectors(
            torch.from_numpy(self.keys),
            sets,
            self.beta,
            self.certificate,
            self.iterations if iterations is None else iterations,
        )

    # --- the model ------------------------------------------------------------------------
    def tokens(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        """The paper's literal tokens x_i = (z_i, y_i, i): (n, N, d' + q + 1) float64."""
        z, y = np.asarray(inputs["z"], dtype=np.float64), np.asarray(inputs["y"])
        position = np.broadcast_to(
            np.arange(self.N, dtype=np.float64)[None, :, None], (*z.shape[:2], 1)
        )
        return torch.from_numpy(np.concatenate([z, y.astype(np.float64), position], axis=-1))

    def model(self) -> MultiHeadAttentionLayer:
        d, q = self.d_prime, self.q
        keys = torch.from_numpy(self.keys)

        def query(x: torch.Tensor) -> torch.Tensor:
            sets = torch.sort(x[..., d : d + q].round().long(), dim=-1).values
            return self.beta * self.vectors(sets)

        def key(x: torch.Tensor) -> torch.Tensor:
            return keys.T[x[..., -1].round().long()]

        def value(x: torch.Tensor) -> torch.Tensor:
            return x[..., :d]

        head = AttentionUnit(query, key, value, precision=self.precision, query_chunk=256)
        return MultiHeadAttentionLayer([head], precision=self.precision)

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The head's output on raw qSA inputs: (n, N, d') float64."""
        layer = self.model()
        with torch.no_grad():
            return layer(self.tokens(inputs)).numpy()

    # --- exact worst case over z, for given index sets -------------------------------------------
    def _weights_minus_target(self, sets: np.ndarray, iterations: int | None = None) -> np.ndarray:
        return certificate_weight_gaps(
            self.keys,
            sets,
            self.beta,
            self.precision,
            self.certificate,
            self.iterations if iterations is None else iterations,
        )

    def worst_case_errors(self, sets: np.ndarray, iterations: int | None = None) -> np.ndarray:
        """sup over z in the unit ball of the error at a token with index set S, for each S: (k,)."""
        sets = np.asarray(sets).reshape(-1, self.q)
        return np.concatenate(
            [
                np.abs(self._weights_minus_target(sets[s : s + _SET_CHUNK], iterations)).sum(axis=1)
                for s in range(0, len(sets), _SET_CHUNK)
            ]
            or [np.zeros(0)]
        )

    def worst_values(self, index_set: np.ndarray) -> np.ndarray:
        """The z (N, d') that maximises the error at a token pointing to `index_set`."""
        signs = np.sign(self._weights_minus_target(np.asarray(index_set)[None])[0])
        z = np.zeros((self.N, self.d_prime))
        z[:, 0] = np.where(signs == 0, 1.0, signs)
        return z

    def adversarial_sets(
        self, rng: np.random.Generator, targets: int = 32, moves: int = 32, rounds: int = 3
    ) -> np.ndarray:
        """Index sets chosen against this head: for `targets` keys u_t, the greedy least-squares
        set around u_t, improved by swap local search on this head's own worst-case error (the
        softmax-leak program screened at a few iterations; verification re-scores in full)."""
        screen = SCREEN_ITERATIONS if self.certificate == "softmax-leak" else None
        return local_search_sets(
            lambda sets: self.worst_case_errors(sets, screen),
            self.keys,
            self.q,
            rng,
            targets,
            lambda t: greedy_least_squares_sets(self.keys, t, self.q),
            moves=moves,
            rounds=rounds,
        )

    # --- verification ------------------------------------------------------------------------
    def task(self) -> QSparseAveraging:
        return QSparseAveraging(self.N, self.q, self.d_prime)

    def adversarial_batches(self, sets: np.ndarray, rng: np.random.Generator) -> list[Batch]:
        """Sequences carrying the adversarial sets (one per token, random sets fill the rest),
        each with the z that is worst for the worst set it carries."""
        task, batches = self.task(), []
        for start in range(0, len(sets), self.N):
            chunk = sets[start : start + self.N]
            y = distinct_indices(rng, (1, self.N), self.q, self.N)
            y[0, : len(chunk)] = chunk
            worst = chunk[int(np.argmax(self.worst_case_errors(chunk)))]
            inputs = {"z": self.worst_values(worst)[None], "y": y}
            batches.append(Batch(inputs, task.solve(inputs)))
        return batches

    def verify(
        self,
        task: QSparseAveraging | None = None,
        rng: int | np.random.Generator | None = 0,
        n: int = 4,
        adversarial_targets: int = 32,
    ) -> Verification:
        """Run the head on n sampled sequences and on adversarial sequences; score with task.score."""
        task = matching_task(task, self.task())
        rng = as_generator(rng)
        batch = task.sample(rng, n)
        random_score = task.score(batch, self.predict(batch.inputs))
        sets = self.adversarial_sets(rng, adversarial_targets)
        adversarial = self.adversarial_batches(sets, rng)
        scores = [task.score(b, self.predict(b.inputs)) for b in adversarial]
        set_errors = self.worst_case_errors(sets)
        return Verification(
            task=task.name,
            params=task.params,
            threshold=self.eps,
            random=random_score,
            adversarial=merge_scores(scores, [len(b) for b in adversarial]),
            n_random=n,
            n_adversarial=len(adversarial),
            notes={
                "adversarial_sets": int(len(sets)),
                "adversarial_sup_over_z": float(set_errors.max()) if len(sets) else 0.0,
            },
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "theorem": 2,
            "N": self.N,
            "q": self.q,
            "d_prime": self.d_prime,
            "eps": self.eps,
            "m": self.m,
            "key_dim": self.key_dim,
            "p": self.precision,
            "beta": self.beta,
            "seed": self.seed,
            "certificate": self.certificate,
            "search": {str(k): v for k, v in sorted(self.search.items())},
            "holdout": list(self.holdout),
        }
