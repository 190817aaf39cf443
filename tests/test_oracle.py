import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from attnlab import BudgetExhausted, Oracle, OracleError, QueryJournal, QueryShapeError
from attnlab.models import SingleHeadAttention


def linear_target(X):
    return X.sum(axis=(1, 2))


def test_counts_one_query_per_sequence_also_in_batches():
    oracle = Oracle(linear_target, d=3)
    assert oracle(np.ones((2, 3))) == 6.0
    out = oracle(np.ones((5, 4, 3)))
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
    assert oracle.queries == 5


def test_budget_raises_before_sending_and_sends_nothing():
    calls = []

    def target(X):
        calls.append(X.shape[0])
        return linear_target(X)

    oracle = Oracle(target, d=2, budget=5)
    oracle(np.ones((4, 1, 2)))
    with pytest.raises(BudgetExhausted) as info:
        oracle(np.ones((2, 1, 2)))
    assert info.value.spent == 4 and info.value.budget == 5 and info.value.requested == 2
    assert "4 of 5" in str(info.value)
    assert calls == [4] and oracle.queries == 4
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
        oracle(np.ones((4, 1, 2)))


def test_wrong_output_shape_raises():
    oracle = Oracle(lambda X: np.zeros((X.shape[0], 2)), d=2)
    with pytest.raises(OracleError, match=r"one number per sequence.*returned shape \(3, 2\)"):
        oracle(np.ones((3, 1, 2)))


@pytest.mark.parametrize("X, message", [
    (np.ones(3), "shape"),
    (np.ones((2, 2, 2, 2)), "shape"),
    (np.ones((0, 3)), "at least one token"),
    (np.ones((2, 4)), "width d = 3"),
    (np.array([[1.0, np.nan, 0.0]]), "NaN"),
    ([["a", "b", "c"]], "real array"),
])
def test_bad_queries_raise_before_any_query(X, message):
    calls = []
    oracle = Oracle(lambda X: calls.append(1) or linear_target(X), d=3)
    with pytest.raises(QueryShapeError, match=message):
        oracle(X)
    assert calls == [] and oracle.queries == 0


def test_journal_replays_without_paying_twice(tmp_path):
    path = tmp_path / "journal.sqlite"
    X = np.random.default_rng(0).standard_normal((10, 3, 2))
    with Oracle(linear_target, d=2, journal=path) as first:
        answers = first(X)
    assert first.paid == 10
    calls = []
    with Oracle(lambda X: calls.append(X.shape[0]) or linear_target(X), d=2, journal=path, budget=3) as again:
        replay = again(np.concatenate([X, X[:2] + 1.0]))
        assert again.queries == 12 and again.paid == 2
    np.testing.assert_array_equal(replay[:10], answers)
    assert calls == [2]
    assert len(QueryJournal(path)) == 12


def test_journal_keeps_answers_when_the_process_is_killed(tmp_path):
    path = tmp_path / "journal.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sys
        import numpy as np
        from attnlab import Oracle
        oracle = Oracle(lambda X: X.sum(axis=(1, 2)), d=2, journal={str(path)!r})
        for i in range(5):
            oracle(np.full((1, 1, 2), float(i)))
        print("answered", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert proc.returncode == -signal.SIGKILL and "answered" in proc.stdout
    journal = QueryJournal(path)
    answers = sorted(a for _, a in journal.entries())
    assert answers == [0.0, 2.0, 4.0, 6.0, 8.0]


def test_noise_model_applies_to_fresh_answers_and_is_journaled(tmp_path):
    def plus_one(y, X, rng):
        return y + 1.0

    oracle = Oracle(linear_target, d=1, noise=plus_one, journal=tmp_path / "j.sqlite")
    assert oracle(np.ones((2, 1))) == 3.0
    assert oracle(np.ones((2, 1))) == 3.0  # replayed, not noised twice
    assert oracle.paid == 1


def test_max_batch_splits_calls():
    sizes = []
    oracle = Oracle(lambda X: sizes.append(X.shape[0]) or linear_target(X), d=1, max_batch=4)
    oracle(np.ones((10, 1, 1)))
    assert sizes == [4, 4, 2] and oracle.queries == 10


def test_token_width_is_read_from_attnlab_models():
    oracle = Oracle(SingleHeadAttention.random(7, seed=0))
    assert oracle.d == 7
    with pytest.raises(QueryShapeError, match="width d = 7"):
        oracle(np.ones((2, 3)))
