"""noisy_single_head(method="nuclear-norm"): the Thm 5.1 path on exact and noisy oracles."""

import numpy as np
import pytest

from attnlab import Oracle
from attnlab.evaluate import relative_error
from attnlab.extract.noisy import noisy_single_head
from attnlab.models import SingleHeadAttention
from attnlab.oracle.noise import GaussianNoise, RoundDigits


def _head(d, r, seed=1):
    head = SingleHeadAttention.random(d, rank=r, scale=1 / np.sqrt(d), seed=seed)
    return head, head.W.detach().numpy(), head.v.detach().numpy()


def test_exact_oracle_recovers_a_low_rank_head_with_the_probes_it_counts():
    d, r = 24, 3
    head, W, v = _head(d, r)
    oracle = Oracle(head)
    ex = noisy_single_head(oracle, method="nuclear-norm", method_options={"rank": r})
    assert ex.queries == oracle.queries == d + int(np.ceil(2 * r * 2 * d))
    assert ex.info["rank_found"] == r and ex.dof == r * (2 * d - r) + d
    assert relative_error(ex.W, W) <= 1e-9 and relative_error(ex.v, v) <= 1e-12


@pytest.mark.parametrize("noise", [GaussianNoise(1e-6), RoundDigits(7)])
def test_noisy_oracle_finds_the_rank_and_recovers_w_to_the_noise(noise):
    d, r = 24, 3
    head, W, _ = _head(d, r, seed=4)
    ex = noisy_single_head(
        Oracle(head, noise=noise, seed=3),
        method="nuclear-norm",
        method_options={"measurements": 2 * r * 2 * d},
    )
    assert ex.info["rank_found"] == r  # rank=None: chosen by the residual test
    error = np.linalg.norm(ex.W - W) / np.linalg.norm(W)
    assert (
        1e-9 < error < 1e-3
    )  # noisy answers: an error at the noise's scale, not zero, not garbage


def test_refuses_without_a_rank_or_measurements():
    head, _, _ = _head(8, 2)
    with pytest.raises(ValueError, match="measurements"):
        noisy_single_head(Oracle(head), method="nuclear-norm")
    with pytest.raises(ValueError, match="rank"):
        noisy_single_head(Oracle(head), method="nuclear-norm", method_options={"rank": 9})


def test_exact_oracle_without_a_rank_finds_it():
    d, r = 32, 3
    head, W, _ = _head(d, r, seed=2)
    ex = noisy_single_head(
        Oracle(head), method="nuclear-norm", method_options={"measurements": 2 * r * 2 * d}
    )
    assert ex.info["rank_found"] == r
    assert relative_error(ex.W, W) <= 1e-9
