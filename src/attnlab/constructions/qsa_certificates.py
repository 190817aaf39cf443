"""qSA with one attention head at width O(d' + q log N): Theorem 2 of Sanford, Hsu, Telgarsky (2023).

The construction (dual certificates from compressed sensing):
- keys: token j's key is u_j, column j of a random sign matrix U in {+-1/sqrt(m')}^{m' x N}
  (for m' >= N the one-hot code, which needs no randomness, so no search goes beyond m' = N);
- queries: token i's query is beta * w_S for S = y_i, with the least-squares dual certificate
  w_S = U_S (U_S^T U_S)^{-1} 1_q, so <w_S, u_j> = 1 exactly for j in S and, for a random U with
  m' of order q log N, well below 1 for j outside S;
- values: z_j; the output map reads the d' value coordinates.
The weights are exactly uniform on S; the error is the softmax mass leaking outside S, which the
temperature beta = 2 ln(2N / (q eps)) keeps below eps when every off-support <w_S, u_j> <= 1/2.

The width m reported is m' + d' (query/key coordinates and value coordinates side by side).
Precision p rounds queries, keys, logits, values and outputs to p significant bits
(see attnlab.models.attention_unit).

Worst case over z, exactly. For one index set S with attention weights a, the error at that
token is ||sum_j (a_j - 1[j in S]/q) z_j||_2, and its supremum over z in the unit ball is
sum_j |a_j - 1[j in S]/q|, reached at z_j = sign(a_j - 1[j in S]/q) e_1. `worst_case_errors`
computes this for any list of sets, so the search over m' certifies the worst z for every set it
tries, and the adversary only has to search over index sets: for a target key u_t it greedily
builds the q-set S (among keys most correlated with u_t) that maximises <w_S, u_t>.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from attnlab.constructions.verification import (
    ConstructionFailed,
    Verification,
    matching_task,
    merge_scores,
    smallest_passing,
    sorted_sets,
)
from attnlab.models.attention_unit import AttentionUnit, MultiHeadAttentionLayer, stable_softmax
from attnlab.models.precision import round_to_bits
from attnlab.tasks import Batch, QSparseAveraging, as_generator, distinct_indices

_SET_CHUNK = 512
_KEY_BLOCK = 64


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
    blocks = [np.random.default_rng([seed, block]).choice(np.array([-1.0, 1.0]), size=(_KEY_BLOCK, N))
              for block in range(-(-key_dim // _KEY_BLOCK))]
    return np.concatenate(blocks)[:key_dim] / math.sqrt(key_dim)


def certificate_keys(key_dim: int, N: int, seed: int) -> np.ndarray:
    """The keys of the construction: random signs while key_dim < N; from key_dim >= N on, the
    one-hot code (e_j padded with zeros), whose certificates score exactly 0 off the set, so a
    search over m' always ends at m' <= N."""
    if key_dim < N:
        return random_sign_keys(key_dim, N, seed)
    return np.eye(key_dim, N)


def certificates(keys: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
    """w_S = U_S (U_S^T U_S)^{-1} 1 for every set in `sets` (..., q): shape (..., m').

    Where U_S^T U_S is singular (m' < q, or two equal key columns) the pseudo-inverse keeps the
    map defined; the construction then fails its verification instead of raising.
    """
    chosen = keys.T[sets]  # (..., q, m')
    gram = chosen @ chosen.transpose(-1, -2)
    ones = torch.ones(*gram.shape[:-1], 1, dtype=gram.dtype)
    coefficients, info = torch.linalg.solve_ex(gram, ones)
    singular = info != 0
    if bool(singular.any()):
        coefficients[singular] = torch.linalg.pinv(gram[singular], hermitian=True).sum(dim=-1, keepdim=True)
    return (coefficients * chosen).sum(dim=-2)


def certificate_weight_gaps(keys: np.ndarray, sets: np.ndarray, beta: float, precision: int | None) -> np.ndarray:
    """a - 1_S/|S| for the attention weights a of a certificate query on each set: (k, N).

    All sets have one size s = sets.shape[1]; queries, keys and logits are rounded to `precision`
    bits as in the attention unit. The l1 norm of a row is the worst case over z of the error.
    """
    sets = sorted_sets(sets)
    key_tensor = torch.from_numpy(keys)
    queries = round_to_bits(beta * certificates(key_tensor, torch.from_numpy(sets)), precision)
    logits = round_to_bits(queries @ round_to_bits(key_tensor, precision), precision)
    gap = stable_softmax(logits).numpy()
    gap[np.arange(len(sets))[:, None], sets] -= 1.0 / sets.shape[1]
    return gap


@dataclass
class CertificateQSA:
    """A Theorem-2 head for qSA(N, q, d'), fixed by its key width, precision and seed."""

    N: int
    q: int
    d_prime: int
    eps: float
    key_dim: int
    precision: int | None
    beta: float
    seed: int
    keys: np.ndarray = field(repr=False)
    search: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(cls, N: int, q: int, d_prime: int, eps: float, key_dim: int, precision: int | None = None,
              seed: int = 0, beta: float | None = None) -> "CertificateQSA":
        QSparseAveraging(N, q, d_prime)  # validates N, q, d'
        if not 0 < eps < 1:
            raise ValueError(f"eps must be in (0, 1), got {eps}")
        if key_dim < 1:
            raise ValueError(f"key_dim must be >= 1, got {key_dim}")
        beta = certificate_temperature(N, q, eps) if beta is None else float(beta)
        return cls(N, q, d_prime, float(eps), int(key_dim), precision, beta, int(seed),
                   certificate_keys(key_dim, N, seed))

    @property
    def m(self) -> int:
        return self.key_dim + self.d_prime

    # --- the model ------------------------------------------------------------------------
    def tokens(self, inputs: dict[str, np.ndarray]) -> torch.Tensor:
        """The paper's literal tokens x_i = (z_i, y_i, i): (n, N, d' + q + 1) float64."""
        z, y = np.asarray(inputs["z"], dtype=np.float64), np.asarray(inputs["y"])
        position = np.broadcast_to(np.arange(self.N, dtype=np.float64)[None, :, None], (*z.shape[:2], 1))
        return torch.from_numpy(np.concatenate([z, y.astype(np.float64), position], axis=-1))

    def model(self) -> MultiHeadAttentionLayer:
        d, q = self.d_prime, self.q
        keys = torch.from_numpy(self.keys)

        def query(x: torch.Tensor) -> torch.Tensor:
            return self.beta * certificates(keys, x[..., d:d + q].round().long())

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
    def _weights_minus_target(self, sets: np.ndarray) -> np.ndarray:
        return certificate_weight_gaps(self.keys, sets, self.beta, self.precision)

    def worst_case_errors(self, sets: np.ndarray) -> np.ndarray:
        """sup over z in the unit ball of the error at a token with index set S, for each S: (k,)."""
        sets = np.asarray(sets).reshape(-1, self.q)
        return np.concatenate([np.abs(self._weights_minus_target(sets[s:s + _SET_CHUNK])).sum(axis=1)
                               for s in range(0, len(sets), _SET_CHUNK)] or [np.zeros(0)])

    def worst_values(self, index_set: np.ndarray) -> np.ndarray:
        """The z (N, d') that maximises the error at a token pointing to `index_set`."""
        signs = np.sign(self._weights_minus_target(np.asarray(index_set)[None])[0])
        z = np.zeros((self.N, self.d_prime))
        z[:, 0] = np.where(signs == 0, 1.0, signs)
        return z

    def adversarial_sets(self, rng: np.random.Generator, targets: int = 64) -> np.ndarray:
        """Index sets chosen against the drawn keys: for each of `targets` keys u_t, a q-set S
        not containing t, built greedily from the 4q keys most correlated with u_t so that
        <w_S, u_t> (the off-support score at t) is as large as the greedy search finds."""
        N, q = self.N, self.q
        if N - 1 < q or targets < 1:
            return np.zeros((0, q), dtype=np.int64)
        keys = torch.from_numpy(self.keys)
        chosen_targets = rng.choice(N, size=min(targets, N), replace=False)
        correlation = keys[:, chosen_targets].T @ keys  # (T, N)
        correlation[torch.arange(len(chosen_targets)), torch.from_numpy(chosen_targets)] = -math.inf
        pool = torch.topk(correlation, k=min(4 * q, N - 1), dim=1).indices  # (T, P)
        target_keys = keys.T[torch.from_numpy(chosen_targets)]  # (T, m')
        current = pool[:, :0]
        for _ in range(q):
            # candidates: every pool member not yet chosen, appended to the current set
            taken = (pool[:, :, None] == current[:, None, :]).any(dim=-1)  # (T, P)
            trial = torch.cat([current[:, None, :].expand(-1, pool.shape[1], -1), pool[:, :, None]], dim=-1)
            score = (certificates(keys, trial) * target_keys[:, None, :]).sum(dim=-1)
            score[taken] = -math.inf
            best = score.argmax(dim=1)
            current = trial[torch.arange(len(trial)), best]
        return sorted_sets(current.numpy())

    # --- verification ------------------------------------------------------------------------
    def task(self) -> QSparseAveraging:
        return QSparseAveraging(self.N, self.q, self.d_prime)

    def adversarial_batches(self, sets: np.ndarray, rng: np.random.Generator) -> list[Batch]:
        """Sequences carrying the adversarial sets (one per token, random sets fill the rest),
        each with the z that is worst for the worst set it carries."""
        task, batches = self.task(), []
        for start in range(0, len(sets), self.N):
            chunk = sets[start:start + self.N]
            y = distinct_indices(rng, (1, self.N), self.q, self.N)
            y[0, :len(chunk)] = chunk
            worst = chunk[int(np.argmax(self.worst_case_errors(chunk)))]
            inputs = {"z": self.worst_values(worst)[None], "y": y}
            batches.append(Batch(inputs, task.solve(inputs)))
        return batches

    def verify(self, task: QSparseAveraging | None = None, rng: int | np.random.Generator | None = 0,
               n: int = 4, adversarial_targets: int = 64) -> Verification:
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
            task=task.name, params=task.params, threshold=self.eps,
            random=random_score, adversarial=merge_scores(scores, [len(b) for b in adversarial]),
            n_random=n, n_adversarial=len(adversarial),
            notes={"adversarial_sets": int(len(sets)),
                   "adversarial_sup_over_z": float(set_errors.max()) if len(sets) else 0.0},
        )

    def to_dict(self) -> dict[str, Any]:
        return {"theorem": 2, "N": self.N, "q": self.q, "d_prime": self.d_prime, "eps": self.eps,
                "m": self.m, "key_dim": self.key_dim, "p": self.precision, "beta": self.beta,
                "seed": self.seed, "search": {str(k): v for k, v in sorted(self.search.items())}}


def set_search_error(construction: CertificateQSA, random_sets: np.ndarray, rng_seed: int,
                     adversarial_targets: int) -> float:
    """The worst error (exact sup over z) over the given random sets and the adversary's sets."""
    adversarial = construction.adversarial_sets(np.random.default_rng(rng_seed), adversarial_targets)
    return float(construction.worst_case_errors(np.concatenate([random_sets, adversarial])).max())


def smallest_certificate_qsa(N: int, q: int, d_prime: int = 4, eps: float | None = None,
                             precision: int | None = None, seed: int = 0, random_sets: int = 1024,
                             adversarial_targets: int = 64, limit: int | None = None) -> CertificateQSA:
    """The Theorem-2 head with the smallest key width m' that the search verifies.

    Each candidate m' draws its keys from (seed, m') and passes when the exact worst case over z
    is <= eps on `random_sets` uniform index sets and on the adversary's sets. eps defaults to
    1/(2q), the level of the lower bound.
    """
    QSparseAveraging(N, q, d_prime)  # validates N, q, d' before any work
    eps = 1.0 / (2 * q) if eps is None else eps
    sets = distinct_indices(np.random.default_rng([seed, 1]), (random_sets,), q, N)
    limit = N if limit is None else limit

    def error_at(key_dim: int) -> float:
        candidate = CertificateQSA.build(N, q, d_prime, eps, key_dim, precision, seed)
        return set_search_error(candidate, sets, seed, adversarial_targets)

    try:
        key_dim, history = smallest_passing(error_at, eps, start=max(1, q), limit=limit, what="key width m'")
    except ConstructionFailed as exc:
        raise ConstructionFailed(f"qSA N={N}, q={q}, p={precision}: {exc}") from None
    found = CertificateQSA.build(N, q, d_prime, eps, key_dim, precision, seed)
    found.search = history
    return found
