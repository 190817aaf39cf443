"""evaluate.truth (comparisons with the truth), oracle.sampling and the recipes' rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab._random import as_generator
from attnlab.evaluate import (
    frobenius_error,
    functional_error,
    gaussian_batches,
    parameter_errors,
    relative_error,
    true_parameters,
)
from attnlab.evaluate.recipes import SingleHeadRun, head_recovery, noisy_head_row, run_single_head
from attnlab.models import SingleHeadAttention
from attnlab.oracle.noise import BoundedNoise
from attnlab.oracle.sampling import apply_by_length, group_by_length, random_sequences


def test_relative_and_frobenius_errors():
    truth = np.array([[3.0, 0.0], [0.0, 4.0]])
    estimate = truth + np.array([[0.0, 0.5], [0.0, 0.0]])
    assert relative_error(estimate, truth) == pytest.approx(0.5 / 4.0)
    assert frobenius_error(estimate, truth) == pytest.approx(0.5 / 5.0)
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0 and frobenius_error([1.0], [0.0]) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        relative_error(np.zeros(2), np.zeros(3))


def test_parameter_errors_compare_only_shared_names():
    head = SingleHeadAttention.random(3, seed=1)
    truth = true_parameters(head)
    assert set(truth) == {"W", "v"} and truth["W"].dtype == np.float64
    errors = parameter_errors({"W": truth["W"] * 1.01, "u": np.zeros(3)}, truth)
    assert set(errors) == {"W"} and errors["W"] == pytest.approx(0.01)


def test_functional_error_is_the_largest_gap_over_all_batches():
    head = SingleHeadAttention.random(4, seed=2)
    batches = gaussian_batches(4, 60, lengths=(1, 3), seed=0)
    assert [b.shape for b in batches] == [(20, 1, 4), (20, 2, 4), (20, 3, 4)]

    def exact(X):
        with torch.no_grad():
            return head(torch.as_tensor(X)).numpy()

    assert functional_error(head, exact, batches) == 0.0
    assert functional_error(head, lambda X: exact(X) + 0.25 * (X.shape[1] == 3), batches) == 0.25
    assert functional_error(exact, exact, batches[0]) == 0.0  # a numpy truth and a single batch


def test_sampling_groups_by_length_and_keeps_order():
    seqs = random_sequences(0, 3, 50, lengths=(1, 4))
    assert {s.shape[0] for s in seqs} <= {1, 2, 3, 4} and all(s.shape[1] == 3 for s in seqs)
    again = random_sequences(as_generator(0), 3, 50, lengths=(1, 4))
    assert all(np.array_equal(a, b) for a, b in zip(seqs, again))
    groups = group_by_length(seqs)
    assert sorted(np.concatenate([p for p, _ in groups]).tolist()) == list(range(50))
    sums = apply_by_length(lambda batch: batch.sum(axis=(1, 2)), seqs)
    np.testing.assert_allclose(sums, [s.sum() for s in seqs], rtol=1e-12)
    with pytest.raises(ValueError, match="lengths"):
        random_sequences(0, 3, 5, lengths=(0, 2))


def test_single_head_recipe_row_reads_the_truth_after_extraction():
    row = run_single_head(SingleHeadRun(d=6, seed=3, fidelity_samples=50))
    assert row["queries"] == 6 * 6 + 6 and row["dof"] == 42
    assert row["rel_error_W"] <= 1e-9 and row["rel_error_v"] <= 1e-9 and row["fidelity"] <= 1e-9
    ext, err_w, err_v = head_recovery(5, target_rank=2, seed=4, rank=2)
    assert ext.queries == 2 * 2 * 5 - 4 + 5 and err_w <= 1e-8 and err_v <= 1e-8


def test_noisy_recipe_row_gives_both_methods_at_equal_queries():
    head = SingleHeadAttention.random(6, seed=5)
    rows = {m: noisy_head_row(head, BoundedNoise(1e-7), m, seed=1) for m in ("paper", "robust")}
    assert rows["paper"]["queries"] == rows["robust"]["queries"] == 42
    assert rows["robust"]["W_fro_error"] < rows["paper"]["W_fro_error"]
    assert rows["robust"]["W_fro_error"] <= rows["robust"]["estimate_W_fro_bound"]
