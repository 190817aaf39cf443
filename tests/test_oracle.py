import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch

from attnlab import BudgetExhausted, Oracle, OracleError, QueryShapeError
from attnlab.errors import OracleTimeout
from attnlab.models import SingleHeadAttention
from attnlab.oracle.journal import _distinct_by_bytes, distinct_queries
from attnlab.oracle.noise import GaussianNoise, RoundDigits


def linear_target(X):
    return X.sum(axis=(1, 2))


def distinct(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def counting(target):
    calls = []

    def answer(X):
        calls.append(X.copy())
        return target(X)

    return answer, calls


def test_counts_one_query_per_sequence_also_in_batches():
    oracle = Oracle(linear_target, d=3)
    assert oracle(np.ones((2, 3))) == 6.0
    out = oracle(distinct((5, 4, 3)))
    assert out.shape == (5,)
    assert oracle.queries == 6 and oracle.paid == 6


def test_torch_module_target_is_answered_in_float64():
    head = SingleHeadAttention.random(4, seed=0)
    oracle = Oracle(head)
    X = np.random.default_rng(0).standard_normal((3, 5, 4))
    expected = head(torch.as_tensor(X)).detach().numpy()
    np.testing.assert_array_equal(oracle(X), expected)
    assert oracle.d == 4


def test_query_many_handles_ragged_lengths_in_order():
    oracle = Oracle(linear_target, d=2)
    seqs = [np.full((n, 2), float(n)) for n in (3, 1, 2, 3, 1)]
    out = oracle.query_many(seqs)
    np.testing.assert_array_equal(out, [18, 2, 8, 18, 2])
    assert oracle.queries == 5 and oracle.paid == 3  # the two repeats are answered once


def test_budget_raises_before_sending_and_sends_nothing():
    target, calls = counting(linear_target)
    oracle = Oracle(target, d=2, budget=5)
    oracle(distinct((4, 1, 2)))
    with pytest.raises(BudgetExhausted) as info:
        oracle(distinct((2, 1, 2), seed=1))
    assert info.value.spent == 4 and info.value.budget == 5 and info.value.requested == 2
    assert "4 of 5" in str(info.value)
    assert [c.shape[0] for c in calls] == [4] and oracle.queries == 4
    oracle(np.ones((1, 2)))
    assert oracle.remaining == 0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_answers_raise_and_name_the_query(bad):
    def target(X):
        y = linear_target(X)
        y[2] = bad
        return y

    oracle = Oracle(target, d=2)
    with pytest.raises(OracleError, match="query 2 of this batch"):
        oracle(distinct((4, 1, 2)))
    assert oracle.paid == 4


def test_wrong_output_shape_raises():
    oracle = Oracle(lambda X: np.zeros((X.shape[0], 2)), d=2)
    with pytest.raises(OracleError, match=r"one number per sequence.*returned shape \(3, 2\)"):
        oracle(distinct((3, 1, 2)))


def _raises_after_answering(X):
    linear_target(X)
    raise RuntimeError("connection reset after the answer was computed")


@pytest.mark.parametrize(
    "target, message",
    [
        (lambda X: np.zeros((X.shape[0], 2)), "one number per sequence"),
        (lambda X: np.zeros(X.shape[0] + 1), "one number per sequence"),
        (_raises_after_answering, "RuntimeError: connection reset"),
        (lambda X: linear_target(X) + 1j, "complex"),
        (lambda X: torch.as_tensor(linear_target(X)) * (1 + 1j), "complex"),
        (lambda X: np.full(X.shape[0], np.nan), "not finite"),
        (lambda X: [["x"]] * X.shape[0], "not real numbers"),
    ],
)
def test_every_sequence_handed_to_the_target_is_paid_whatever_it_answers(target, message):
    sent = []
    oracle = Oracle(lambda X: sent.append(X.shape[0]) or target(X), d=2, budget=10)
    with pytest.raises(OracleError, match=message):
        oracle(distinct((4, 1, 2)))
    assert sent == [4] and oracle.paid == 4 and oracle.queries == 0
    with pytest.raises(BudgetExhausted, match="4 of 10"):
        oracle(distinct((7, 1, 2), seed=1))
    assert sent == [4]


@pytest.mark.parametrize(
    "X",
    [
        np.ones((2, 3)) * (1 + 2j),
        np.ones((4, 2, 3), dtype=np.complex64),
        [[1 + 0j, 2.0, 3.0]],
        torch.ones(2, 3, dtype=torch.complex128),
    ],
)
def test_complex_queries_are_refused_not_truncated(X):
    target, calls = counting(linear_target)
    oracle = Oracle(target, d=3)
    with pytest.raises(QueryShapeError, match="complex"):
        oracle(X)
    with pytest.raises(QueryShapeError, match="complex"):
        oracle.query_many([X if np.ndim(X) == 2 else X[0]])
    assert calls == [] and oracle.paid == 0


@pytest.mark.parametrize(
    "X, message",
    [
        (np.ones(3), "shape"),
        (np.ones((2, 2, 2, 2)), "shape"),
        (np.ones((0, 3)), "at least one token"),
        (np.ones((2, 4)), "width d = 3"),
        (np.ones((2, 0)), "width d >= 1"),
        (np.ones((4, 2, 0)), "width d >= 1"),
        (np.array([[1.0, np.nan, 0.0]]), "NaN"),
        ([["a", "b", "c"]], "real array"),
        ([[1.0, 2.0], [1.0]], "real array"),
    ],
)
def test_bad_queries_raise_before_any_query(X, message):
    calls = []
    oracle = Oracle(lambda X: calls.append(1) or linear_target(X), d=3)
    with pytest.raises(QueryShapeError, match=message):
        oracle(X)
    assert calls == [] and oracle.queries == 0


def test_tokens_of_width_zero_are_refused_before_d_is_fixed_by_them():
    oracle = Oracle(linear_target)
    with pytest.raises(QueryShapeError, match="width d >= 1"):
        oracle(np.ones((3, 0)))
    assert oracle.d is None


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"budget": True}, "budget"),
        ({"budget": False}, "budget"),
        ({"budget": float("nan")}, "budget"),
        ({"budget": float("inf")}, "budget"),
        ({"budget": -1}, "budget"),
        ({"budget": 2.5}, "budget"),
        ({"budget": "10"}, "budget"),
        ({"max_batch": 2.5}, "max_batch"),
        ({"max_batch": 0}, "max_batch"),
        ({"max_batch": True}, "max_batch"),
        ({"max_batch": float("inf")}, "max_batch"),
        ({"d": True}, "d"),
        ({"d": 0}, "d"),
        ({"d": 2.5}, "d"),
        ({"d": float("nan")}, "d"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": float("inf")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"journal_chunk": 0}, "journal_chunk"),
        ({"journal_probes": -1}, "journal_probes"),
        ({"journal_id": ""}, "journal_id"),
        ({"journal_id": 7}, "journal_id"),
    ],
)
def test_bad_settings_raise_clear_errors(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        Oracle(linear_target, **kwargs)


def test_whole_floats_and_numpy_integers_are_accepted_as_counts():
    oracle = Oracle(linear_target, d=np.int64(2), budget=10.0, max_batch=np.int32(3))
    assert (oracle.d, oracle.budget, oracle.max_batch) == (2, 10, 3)
    assert type(oracle.budget) is int


def test_declared_width_contradicting_an_attnlab_model_names_both_widths():
    with pytest.raises(QueryShapeError, match=r"d=5.*width d = 4"):
        Oracle(SingleHeadAttention.random(4, seed=0), d=5)


def test_declared_width_contradicting_a_plain_callable_is_reported_on_the_first_call():
    w = np.arange(4.0)
    oracle = Oracle(lambda X: (X @ w).sum(axis=1), d=5, budget=100)
    with pytest.raises(
        OracleError, match=r"ValueError.*has not answered.*another width than d = 5"
    ):
        oracle(distinct((3, 2, 5)))
    assert oracle.paid == 3


def test_a_torch_module_without_a_width_failing_on_the_first_call_says_so():
    module = torch.nn.Sequential(torch.nn.Linear(4, 1, dtype=torch.float64), torch.nn.Flatten(0))
    oracle = Oracle(lambda X: module(torch.as_tensor(X)).reshape(X.shape[0], -1).sum(1), d=5)
    with pytest.raises(OracleError, match=r"(?s)mat1 and mat2.*another width than d = 5"):
        oracle(distinct((2, 1, 5)))


@pytest.mark.parametrize("max_batch", [None, 4])
def test_a_batch_of_zero_sequences_returns_an_empty_answer_array(max_batch):
    target, calls = counting(linear_target)
    oracle = Oracle(target, d=3, max_batch=max_batch)
    out = oracle(np.ones((0, 2, 3)))
    assert isinstance(out, np.ndarray) and out.shape == (0,)
    assert oracle.query_many([]).shape == (0,)
    assert calls == [] and oracle.queries == 0 and oracle.paid == 0
    with pytest.raises(QueryShapeError, match="width d = 3"):
        oracle(np.ones((0, 2, 4)))


def test_identical_queries_in_one_batch_are_answered_once_and_paid_once():
    target, calls = counting(linear_target)
    oracle = Oracle(target, d=2, budget=3)
    base = distinct((3, 2, 2))
    batch = base[[0, 1, 0, 2, 1, 0, 0]]
    out = oracle(batch)
    np.testing.assert_array_equal(out, linear_target(batch))
    assert oracle.queries == 7 and oracle.paid == 3
    assert len(calls) == 1 and np.array_equal(
        calls[0], base
    )  # distinct ones, first-appearance order
    with pytest.raises(BudgetExhausted):
        oracle(np.ones((1, 2)))


def test_zero_and_negative_zero_are_different_queries():
    oracle = Oracle(linear_target, d=1)
    oracle(np.array([[[0.0]], [[-0.0]], [[0.0]]]))
    assert oracle.paid == 2


def test_repeats_stay_fresh_paid_draws_under_random_noise_without_a_journal():
    target, calls = counting(linear_target)
    oracle = Oracle(target, d=2, noise=GaussianNoise(0.1), seed=0)
    out = oracle(np.ones((5, 1, 2)))
    assert oracle.paid == 5 and calls[0].shape[0] == 5
    assert len(set(out.tolist())) == 5  # independent noise, so repeats can be averaged


def test_repeats_are_merged_under_deterministic_noise():
    oracle = Oracle(linear_target, d=2, noise=RoundDigits(3))
    out = oracle(np.ones((5, 1, 2)))
    assert oracle.paid == 1 and np.all(out == out[0])


def test_distinct_queries_matches_a_byte_by_byte_reference():
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 3, 2))
    base[7] = -0.0
    base[8] = 0.0
    batch = base[rng.integers(0, 40, size=300)]
    first, inverse = distinct_queries(batch)
    ref_first, ref_inverse = _distinct_by_bytes(batch.reshape(300, -1).view(np.uint64))
    np.testing.assert_array_equal(first, ref_first)
    np.testing.assert_array_equal(inverse, ref_inverse)
    assert np.array_equal(batch[first][inverse], batch)
    assert np.all(np.diff(first) > 0)


def test_max_batch_splits_calls():
    sizes = []
    oracle = Oracle(lambda X: sizes.append(X.shape[0]) or linear_target(X), d=1, max_batch=4)
    oracle(distinct((10, 1, 1)))
    assert sizes == [4, 4, 2] and oracle.queries == 10


def test_token_width_is_read_from_attnlab_models():
    oracle = Oracle(SingleHeadAttention.random(7, seed=0))
    assert oracle.d == 7
    with pytest.raises(QueryShapeError, match="width d = 7"):
        oracle(np.ones((2, 3)))


def test_require_d_gives_the_standard_message():
    assert Oracle(linear_target, d=3).require_d("single_head") == 3
    with pytest.raises(
        ValueError, match=r"^single_head needs the token width: Oracle\(target, d=\.\.\.\)"
    ):
        Oracle(linear_target).require_d("single_head")


def test_a_slow_call_times_out_is_paid_and_the_oracle_stays_usable():
    release = threading.Event()
    first = []

    def target(X):
        if not first:
            first.append(1)
            release.wait(30)  # hung until the test lets it go
        return linear_target(X)

    oracle = Oracle(target, d=2, budget=10, timeout=0.2)
    start = time.monotonic()
    with pytest.raises(OracleTimeout, match=r"within timeout = 0.2 s.*count as paid"):
        oracle(distinct((4, 1, 2)))
    assert time.monotonic() - start < 5
    assert oracle.paid == 4 and oracle.queries == 0
    np.testing.assert_array_equal(
        oracle(distinct((2, 1, 2), seed=1)), linear_target(distinct((2, 1, 2), seed=1))
    )
    assert oracle.paid == 6
    release.set()


def test_timeout_passes_the_target_s_own_errors_through():
    def target(X):
        raise KeyError("boom")

    with pytest.raises(OracleError, match="KeyError") as info:
        Oracle(target, d=2, timeout=5)(distinct((2, 1, 2)))
    assert isinstance(info.value.__cause__, KeyError)


def test_a_hung_target_does_not_keep_the_process_alive(tmp_path):
    script = textwrap.dedent("""
        import threading, numpy as np
        from attnlab import Oracle
        from attnlab.errors import OracleTimeout
        oracle = Oracle(lambda X: threading.Event().wait() or X.sum(axis=(1, 2)), d=2, timeout=0.3)
        try:
            oracle(np.ones((3, 1, 2)))
        except OracleTimeout:
            print("timed out, paid", oracle.paid, flush=True)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "timed out, paid 1" in proc.stdout  # three identical sequences: one paid query


@pytest.mark.parametrize(
    "refusal", [BudgetExhausted(5, 5, 2), QueryShapeError("too many tokens for the service")]
)
def test_a_target_refusing_before_answering_is_not_charged(refusal):
    def target(X):
        raise refusal

    oracle = Oracle(target, d=2, budget=10)
    with pytest.raises(type(refusal)):
        oracle(distinct((2, 1, 2)))
    assert oracle.paid == 0


def test_a_target_s_own_timeout_error_is_not_mistaken_for_the_oracle_s():
    def target(X):
        raise TimeoutError("upstream read timed out")

    with pytest.raises(OracleError, match="TimeoutError: upstream read timed out") as info:
        Oracle(target, d=2, timeout=5)(distinct((2, 1, 2)))
    assert not isinstance(info.value, OracleTimeout)


def test_distinct_queries_groups_by_near_equal_hashes_and_confirms_by_bytes():
    """Identical sequences whose float hashes differ by rounding are still merged; different
    sequences whose hashes tie exactly are never merged."""
    from attnlab.oracle.checks import row_hashes

    rng = np.random.default_rng(7)
    X = rng.standard_normal((50, 2, 8))
    X[40] = X[3]
    X[41] = X[3]
    X[42, 0, 0] = np.nextafter(X[5, 0, 0], np.inf)  # one bit away from row 5
    X[42, 0, 1:], X[42, 1] = X[5, 0, 1:], X[5, 1]
    hashes = row_hashes(X)
    hashes[40] *= 1 + 4e-16 * 64  # what another summation order could do to an identical row
    hashes[41] *= 1 - 4e-16 * 64
    hashes[7] = hashes[6]  # an exact tie between different rows
    first, inverse = distinct_queries(X, hashes)
    assert first.size == 48  # rows 40 and 41 merged into 3; 42 kept apart from 5; 6, 7 apart
    np.testing.assert_array_equal(X[first][inverse], X)
    assert inverse[40] == inverse[41] == inverse[3]
    assert inverse[42] != inverse[5] and inverse[6] != inverse[7]


def test_device_oracle_rejects_bad_shapes_with_the_oracles_messages():
    from attnlab.oracle.device import DeviceOracle

    d = 4
    head = SingleHeadAttention.random(d, seed=0)
    host, device = Oracle(head, d=d), DeviceOracle(head, d=d)
    for shape in [(d,), (1, 1, 2, d), (3, 2, d + 1), (3, 0, d), (2, 2, 0)]:
        X = np.zeros(shape)
        with pytest.raises(QueryShapeError) as host_error:
            host(X)
        with pytest.raises(QueryShapeError) as device_error:
            device(torch.from_numpy(X))
        assert str(device_error.value) == str(host_error.value), shape
    Z = np.zeros((2, 2, d), dtype=complex)
    with pytest.raises(QueryShapeError) as host_error:
        host(Z)
    with pytest.raises(QueryShapeError) as device_error:
        device(torch.from_numpy(Z))
    # the same message, naming the dtype as numpy or torch spells it
    assert str(device_error.value).replace("torch.", "") == str(host_error.value)
    assert host.paid == device.paid == 0
