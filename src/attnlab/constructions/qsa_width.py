"""The smallest Theorem-2 width that passes its own check: search, then verify on unseen samples.

`smallest_certificate_qsa` searches the key width m' (doubling, then bisection) for a
`CertificateQSA` whose worst error over random sets and an adversary aimed at its own program
stays within eps, judged on samples the fit never saw; `verified_certificate_qsa` (the CLI's
entry point) then verifies end to end on yet another sample and widens until that passes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from attnlab.constructions.qsa_certificates import CertificateQSA, check_certificate
from attnlab.constructions.verification import ConstructionFailed, Verification, smallest_passing
from attnlab.tasks import QSparseAveraging, distinct_indices


def sampled_error(
    construction: CertificateQSA, random_sets: np.ndarray, rng_seed, adversarial_targets: int
) -> float:
    """The worst error (exact sup over z) over the given random sets and the adversary's sets."""
    adversarial = construction.adversarial_sets(
        np.random.default_rng(rng_seed), adversarial_targets
    )
    return float(construction.worst_case_errors(np.concatenate([random_sets, adversarial])).max())


def smallest_certificate_qsa(
    N: int,
    q: int,
    d_prime: int = 4,
    eps: float | None = None,
    precision: int | None = None,
    seed: int = 0,
    random_sets: int = 256,
    adversarial_targets: int = 32,
    limit: int | None = None,
    certificate: str = "softmax-leak",
    holdout_rounds: int = 8,
    resolution: float = 0.02,
    fit_margin: float = 0.5,
    judge_margin: float = 0.8,
) -> CertificateQSA:
    """The Theorem-2 head with the smallest key width m' that the search verifies.

    Fit: candidate m' (keys from (seed, m')) passes when the exact worst case over z is <= fit_margin * eps on
    `random_sets` uniform index sets and on the adversary's sets (targets drawn from (seed, 2));
    doubling then bisection to `resolution` (relative). Judge: the fitted m' must also pass on a
    held-out sample (fresh random sets, adversary with fresh targets) at judge_margin * eps; while
    it fails m' grows by 10% and a new held-out sample is drawn (at most `holdout_rounds`; m' = N
    always passes). The margins are there because a worst case over more sets is larger: a width
    fitted exactly at eps on one sample fails the next sample often (measured), while the error
    falls about exponentially in m', so the margins cost ~10% of width.
    `search` records the fit, `holdout` the judged widths. eps defaults to 1/(2q).
    """
    QSparseAveraging(N, q, d_prime)  # validates N, q, d' before any work
    check_certificate(certificate)
    eps = 1.0 / (2 * q) if eps is None else eps
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps}")
    sets = distinct_indices(np.random.default_rng([seed, 1]), (random_sets,), q, N)
    limit = N if limit is None else limit

    def build(key_dim: int) -> CertificateQSA:
        return CertificateQSA.build(
            N, q, d_prime, eps, key_dim, precision, seed, certificate=certificate
        )

    def error_at(key_dim: int) -> float:
        return sampled_error(build(key_dim), sets, [seed, 2], adversarial_targets)

    try:
        key_dim, history = smallest_passing(
            error_at,
            fit_margin * eps,
            start=max(1, q),
            limit=limit,
            what="key width m'",
            resolution=resolution,
        )
    except ConstructionFailed as exc:
        raise ConstructionFailed(f"qSA N={N}, q={q}, p={precision}: {exc}") from None
    judged = []
    for round_ in range(holdout_rounds):
        candidate = build(key_dim)
        fresh = distinct_indices(np.random.default_rng([seed, 100 + round_]), (random_sets,), q, N)
        error = sampled_error(candidate, fresh, [seed, 200 + round_], adversarial_targets)
        judged.append({"key_dim": key_dim, "error": error})
        if error <= judge_margin * eps or key_dim >= limit:
            break
        key_dim = min(limit, math.ceil(1.1 * key_dim))
    found = build(key_dim)
    found.search, found.holdout = history, judged
    return found


def verified_certificate_qsa(
    N: int,
    q: int,
    d_prime: int = 4,
    eps: float | None = None,
    precision: int | None = None,
    seed: int = 0,
    n: int = 1,
    certificate: str = "softmax-leak",
    attempts: int = 6,
    **search,
) -> tuple[CertificateQSA, Verification, list[dict[str, Any]]]:
    """`smallest_certificate_qsa`, then the end-to-end verification (fresh seed); while it fails,
    widen m' by 10% and verify again. Returns the head, its (passing, unless m' = N was reached
    and still failed) verification, and every width tried with its result."""
    head = smallest_certificate_qsa(
        N, q, d_prime, eps, precision, seed, certificate=certificate, **search
    )
    tried = []
    for attempt in range(attempts):
        verification = head.verify(rng=np.random.default_rng([seed, 300 + attempt]), n=n)
        tried.append(
            {
                "key_dim": head.key_dim,
                "max_error": verification.max_error,
                "passed": verification.passed,
            }
        )
        if verification.passed or head.key_dim >= N:
            break
        widened = CertificateQSA.build(
            N,
            q,
            d_prime,
            head.eps,
            min(N, math.ceil(1.1 * head.key_dim)),
            precision,
            seed,
            certificate=certificate,
        )
        widened.search, widened.holdout = head.search, head.holdout
        head = widened
    return head, verification, tried
