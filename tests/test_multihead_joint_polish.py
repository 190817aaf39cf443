"""joint_polish's block elimination (many pairs) solves the same problem as the dense solve."""

import numpy as np
import pytest
from scipy.special import expit

import attnlab.extract.multihead.rational as rational
from attnlab.extract.multihead.rational import HeadFit, joint_polish, layouts


def _direction_fits(H: int, P: int, seed: int):
    rng = np.random.default_rng(seed)
    gamma = rng.standard_normal(H)
    fits = []
    for p in range(P):
        k = 2 * H - 1 if p < 3 else H  # anchors: a full fit; continued tokens: H answers
        t = np.array([c / m for c, m in layouts(k)])
        s = rng.uniform(-2, 2, H)
        F = expit(s[None, :] + np.log(t)[:, None]) @ gamma
        start_gamma = gamma + 1e-7 * rng.standard_normal(H)
        fits.append(HeadFit(start_gamma, s + 1e-7 * rng.standard_normal(H), 0.0, t, F))
    return fits, float(gamma.sum()), gamma


@pytest.mark.parametrize("H, P", [(2, 40), (4, 64), (3, 100)])
def test_block_elimination_matches_the_dense_least_squares(H, P, monkeypatch):
    fits, S, gamma = _direction_fits(H, P, seed=H * P)
    assert P >= rational.STRUCTURED_PAIRS
    blocked = joint_polish(fits, S)
    monkeypatch.setattr(rational, "STRUCTURED_PAIRS", 10**9)
    dense = joint_polish(fits, S)
    # gammas and logits agree (with each other and the truth) as far as the problem pins them
    # down: its error bound, up to 100x (the bound is a rounding-level estimate)
    pinned = 100 * dense[3] + 1e-12
    assert np.max(np.abs(blocked[0] - gamma)) <= pinned
    assert np.max(np.abs(blocked[0] - dense[0])) <= pinned
    assert np.max(np.abs(blocked[1] - dense[1])) <= pinned
    assert blocked[2] <= 1e-14 and dense[2] <= 1e-14  # both fit the exact answers
    # the same smallest singular value, up to the digits its squared normal matrix loses (9%
    # at the (3, 100) case, whose bound is 1.4e-6: condition ~1e10)
    assert blocked[3] == pytest.approx(dense[3], rel=0.2)
