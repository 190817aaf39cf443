"""How long the learner's tokens should be, read off the box: the rescaled box f(sX).

The learner's probes assume logits of unit tokens of order one: W of entries ~0.01 to ~10. A box
queried at tokens s x is itself a multi-head regressor, f(sX) = (s^2 W_h, s u_h, s v_h, c), so a
W of any size is read as that rescaled box and mapped back. The scale is measured with pairs
(a, b) of random unit tokens at lengths t on a geometric grid: with x_1 = t (a + b), x_2 = t b,

    f([x_1; x_2]) - (f([x_1]) + f([x_2])) / 2 = t sum_h (sigma(t^2 a^T W_h b + t a^T u_h) - 1/2) a^T v_h,

against (f([x_1]) - f([x_2])) / 2 = t sum_h a^T v_h / 2: their ratio r(t) is tanh(logit / 2) for
one head, a mixture for several. The length where it crosses REFERENCE_RATIO, over the length
where the same pairs cross it for W of unit size, is the scale.
"""

from __future__ import annotations

import numpy as np

from attnlab.oracle import Oracle

# Token lengths tried: 10^(k/2) for k in -8..8 (1e-4 to 1e4), three queries each.
LENGTHS = 10.0 ** (np.arange(-8, 9) / 2.0)
PAIRS = 4
# r(t) crosses this at logits of about 0.6 for one head.
REFERENCE_RATIO = 0.3
# Where r(t) crosses REFERENCE_RATIO on the learner's home ground: MultiHeadRegressor.random(d, H,
# scale=1), H in 1..4, d in 4..16, 4 seeds each: median 0.70, range 0.40-1.82 (and exactly
# 100x / 0.01x that at scale 1e-4 / 100: the estimate is scale-invariant).
HOME_LENGTH = 0.7
# The learner is left to its own token lengths when the scale is within this factor of 1.
AT_HOME = 3.0
# A W recovered with entries of rms below this (or above its inverse) was read at logits too far
# from the learner's home (random unit-scale heads: rms 0.6-1.4); its own token lengths cope
# exactly from 1e-4 to 1e3 (errors <= 3e-12 median), at 1e-6 they leave 1e-8-3e-8: read again,
# rescaled from the W just found.
FAR_FROM_HOME = 1e-5


def scale_from(W: np.ndarray) -> float:
    """The token length that makes a recovered W's entries of about unit size."""
    rms = float(np.sqrt(np.mean(np.asarray(W) ** 2)))
    return 1.0 / float(np.sqrt(rms)) if rms > 0 else 1.0


def token_scale(oracle: Oracle, d: int, rng: np.random.Generator) -> float | None:
    """The token length s at which the box's unit-token logits look like those of a unit-size W
    (None when no pair shows any dependence on the length: no heads, or heads that cancel).
    Costs 3 * len(LENGTHS) * PAIRS queries (204), counted by the oracle."""
    crossings = []
    for _ in range(PAIRS):
        a, b = rng.standard_normal(d), rng.standard_normal(d)
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)
        sequences = []
        for t in LENGTHS:
            x1, x2 = t * (a + b), t * b
            sequences += [np.stack([x1, x2]), x1[None], x2[None]]
        answers = oracle.query_many(sequences).reshape(LENGTHS.size, 3)
        pair, one, two = answers[:, 0], answers[:, 1], answers[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.abs(pair - (one + two) / 2.0) / np.abs((one - two) / 2.0)
        above = np.flatnonzero(ratio >= REFERENCE_RATIO)
        if above.size == 0 or above[0] == 0:
            continue  # never (or already at the shortest length): no reading of the crossing
        k = int(above[0])
        # interpolate the crossing in log length between the last point below and the first above
        low, high = ratio[k - 1], ratio[k]
        fraction = (REFERENCE_RATIO - low) / (high - low) if high > low else 0.5
        crossings.append(
            np.log10(LENGTHS[k - 1]) + fraction * np.log10(LENGTHS[k] / LENGTHS[k - 1])
        )
    if not crossings:
        return None
    return float(10.0 ** np.median(crossings)) / HOME_LENGTH


def scaled_oracle(parent: Oracle, s: float) -> Oracle:
    """The box f(sX): every query is sent to (and counted by) `parent` with its tokens times s."""
    return Oracle(lambda X: parent(s * np.asarray(X, dtype=np.float64)), d=parent.d)
