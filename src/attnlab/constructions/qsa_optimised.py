"""Optimised dual certificates for Theorem 2, and the adversary that attacks them.

The least-squares certificate w_S = U_S (U_S^T U_S)^{-1} 1 scores exactly 1 on S and leaves the
off-set scores <w_S, u_j> to chance; an adversary that picks S among keys correlated with a
target u_t pushes <w_S, u_t> to 1 and breaks it. Any w with <w, u_j> = 1 on S is a certificate,
so attnlab picks, for every set, the one that minimises the softmax leak

    R(w) = sum_{j not in S} exp(beta (<w, u_j> - 1))   subject to  <w, u_j> = 1 for j in S.

Why this program and not the LP "minimise max_{j not in S} <w, u_j>" (scipy HiGHS):
- it is the error itself: with weights exactly uniform on S, the worst case over z of the error
  at the token is 2 R / (q + R) (the l1 distance of the attention weights from uniform), strictly
  increasing in R, so minimising R minimises the verified error at the beta the head uses; the LP
  optimum only bounds it (R <= (N - q) e^{beta (t - 1)});
- it is smooth and, after eliminating the q equality constraints (w = w_LS + P v with P the
  projection onto the complement of span U_S), unconstrained: thousands of sets are solved
  together with batched matrix products, where HiGHS solves one LP at a time (measured: 6.8 s for
  one set at N = 4096, q = 16, m' = 400, one core; see docs/constructions.md).
The solver is Nesterov-accelerated projected gradient on (1/beta) log R (its Hessian is at most
beta, so the step is 1/beta), started at w_LS, over an active set of the `active` largest
off-set scores re-chosen from all N keys every `_REFRESH` steps; it returns the best iterate by
the full objective, so it is never worse than least squares. The program has no coupling across
the batch: a token's query depends only on its own index set, up to float rounding (batched
products round differently for different batch sizes, which can move the active-set boundary;
measured: the worst-case error of a set solved alone or in a batch agrees to ~1e-4 relative).
Verifications run the head as the model runs it, so a reported pass is of the actual model.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_REFRESH = 10
_CHUNK_ELEMENTS = 1 << 21  # per chunk of sets: active keys (K x m') and scores (N), in float64s
DEFAULT_ITERATIONS = 150
SCREEN_ITERATIONS = 30


def least_squares_certificates(keys: torch.Tensor, sets: torch.Tensor) -> torch.Tensor:
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
        coefficients[singular] = torch.linalg.pinv(gram[singular], hermitian=True).sum(
            dim=-1, keepdim=True
        )
    return (coefficients * chosen).sum(dim=-2)


def default_active(N: int, q: int) -> int:
    return min(N - q, 8 * q + 32)


def _leak_chunk(
    keys: torch.Tensor, sets: torch.Tensor, beta: float, iterations: int, active: int
) -> torch.Tensor:
    B, q = sets.shape
    N = keys.shape[1]
    chosen = keys.T[sets]  # (B, q, m')
    gram = chosen @ chosen.transpose(-1, -2)
    factor, info = torch.linalg.cholesky_ex(gram)
    start = least_squares_certificates(keys, sets)
    if bool((info != 0).any()) or active < 1 or iterations < 1:
        return start  # singular sets (m' < q): no feasible direction to optimise along

    def project(g: torch.Tensor) -> torch.Tensor:
        return (
            g
            - (chosen.transpose(-1, -2) @ torch.cholesky_solve(chosen @ g[..., None], factor))[
                ..., 0
            ]
        )

    member = torch.zeros(B, N, dtype=torch.bool)
    member[torch.arange(B)[:, None], sets] = True

    def off_scores(w: torch.Tensor) -> torch.Tensor:
        return (w @ keys).masked_fill_(member, -math.inf)

    step = 1.0 / beta
    best, best_leak = start.clone(), None
    y, previous = start.clone(), start.clone()
    active_keys = None
    for it in range(iterations + 1):
        if it % _REFRESH == 0 or it == iterations:
            scores = off_scores(y)
            leak = torch.logsumexp(beta * (scores - 1.0), dim=1)
            if best_leak is None:
                best_leak = leak
            else:
                better = leak < best_leak
                best_leak = torch.where(better, leak, best_leak)
                best[better] = y[better]
            if it == iterations:
                break
            active_keys = keys.T[torch.topk(scores, active, dim=1).indices]  # (B, K, m')
        weights = torch.softmax(beta * (active_keys @ y[..., None])[..., 0], dim=1)
        gradient = (weights[..., None] * active_keys).sum(dim=1)
        current = y - step * project(gradient)
        y = current + (it / (it + 3.0)) * (current - previous)
        previous = current
    return best


def leak_certificates(
    keys: torch.Tensor,
    sets: torch.Tensor,
    beta: float,
    iterations: int = DEFAULT_ITERATIONS,
    active: int | None = None,
) -> torch.Tensor:
    """The softmax-leak certificate of every set in `sets` (..., q): shape (..., m'). See module doc."""
    lead, q = sets.shape[:-1], sets.shape[-1]
    flat = sets.reshape(-1, q)
    N = keys.shape[1]
    active = default_active(N, q) if active is None else min(active, N - q)
    if len(flat) == 0:
        return torch.zeros(*lead, keys.shape[0], dtype=keys.dtype)
    # small problems in large chunks (the loop's per-step overhead dominates them), large in small
    chunk = int(min(8192, max(16, _CHUNK_ELEMENTS // (active * keys.shape[0] + 2 * N))))
    parts = [
        _leak_chunk(keys, flat[s : s + chunk], beta, iterations, active)
        for s in range(0, len(flat), chunk)
    ]
    return torch.cat(parts).reshape(*lead, keys.shape[0])


def local_search_sets(
    errors_of,
    keys: np.ndarray,
    q: int,
    rng: np.random.Generator,
    targets: int,
    start_sets,
    pool_size: int | None = None,
    moves: int = 32,
    rounds: int = 3,
) -> np.ndarray:
    """Index sets chosen against a certificate program by swap local search.

    For each of `targets` target keys t (drawn by rng), start from start_sets(t) (a q-set
    without t), then for `rounds` rounds try `moves` random swaps (one member replaced by one of
    the `pool_size` keys most correlated with u_t) and keep the swap that most raises
    errors_of(sets) (the exact worst case over z of the head's error on each set, from the
    program the head uses), if any does. Returns the final sets (targets, q), sorted.
    """
    N = keys.shape[1]
    if N - 1 < q or targets < 1:
        return np.zeros((0, q), dtype=np.int64)
    chosen = rng.choice(N, size=min(targets, N), replace=False)
    correlation = keys[:, chosen].T @ keys
    correlation[np.arange(len(chosen)), chosen] = -np.inf
    pool_size = min(N - 1, 4 * q if pool_size is None else pool_size)
    pools = np.argsort(-correlation, axis=1)[:, :pool_size]
    current = np.sort(start_sets(chosen), axis=1)
    score = errors_of(current)
    for _ in range(rounds):
        slot = rng.integers(0, q, size=(len(chosen), moves))
        incoming = pools[
            np.arange(len(chosen))[:, None], rng.integers(0, pool_size, size=(len(chosen), moves))
        ]
        trial = np.repeat(current[:, None, :], moves, axis=1)
        trial[np.arange(len(chosen))[:, None], np.arange(moves)[None, :], slot] = incoming
        valid = np.array([[len(set(s)) == q for s in row] for row in trial])
        trial = np.sort(trial, axis=-1)
        trial_scores = errors_of(trial.reshape(-1, q)).reshape(len(chosen), moves)
        trial_scores[~valid] = -np.inf
        best = trial_scores.argmax(axis=1)
        improved = trial_scores[np.arange(len(chosen)), best] > score
        current[improved] = trial[np.arange(len(chosen)), best][improved]
        score = np.where(improved, trial_scores[np.arange(len(chosen)), best], score)
    return np.sort(current, axis=1)
