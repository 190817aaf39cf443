"""The torch probe writer (used on GPU devices) writes exactly the probes of the numpy writer, and
the Oracle's one-pass finite check and exact duplicate hash agree with the elementwise ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnlab.errors import QueryShapeError
from attnlab.extract.single_head.device_probes import DeviceWriter
from attnlab.extract.single_head.directions import (
    AlignedBasis,
    CoordinateDirections,
    DenseDirections,
    ShiftedCoordinates,
)
from attnlab.extract.single_head.reader import write_queries
from attnlab.models import SingleHeadAttention
from attnlab.oracle import Oracle
from attnlab.oracle.checks import all_finite
from attnlab.oracle.device import DeviceOracle
from attnlab.oracle.journal import distinct_queries

D, N = 24, 10


def families(rng):
    v = rng.standard_normal(D)
    return {
        "aligned": AlignedBasis(v, rng),
        "coordinate": CoordinateDirections(D),
        "dense": DenseDirections(rng.standard_normal((D, D))),
        "shifted": ShiftedCoordinates(v),
    }


@pytest.mark.parametrize("a_name", ["aligned", "dense", "shifted"])
@pytest.mark.parametrize("b_name", ["aligned", "coordinate", "dense", "shifted"])
@pytest.mark.parametrize(
    "a_const,b_const", [(False, True), (True, False), (False, False), (True, True)]
)
def test_device_writer_writes_the_numpy_probes(a_name, b_name, a_const, b_const):
    rng = np.random.default_rng(3)
    fam = families(rng)
    a_dirs, b_dirs = fam[a_name], fam[b_name]
    ai = 5 if a_const else rng.permutation(D)[:N]
    bi = 7 if b_const else rng.permutation(D)[:N]
    X = np.full((N, 2, D), np.nan)
    write_queries(X[:, 0], X[:, 1], a_dirs, ai, 0.3, b_dirs, bi, 1.7)
    T = torch.full((N, 2, D), float("nan"), dtype=torch.float64)
    DeviceWriter(torch.device("cpu")).write_queries(
        T[:, 0], T[:, 1], a_dirs, ai, 0.3, b_dirs, bi, 1.7
    )
    np.testing.assert_allclose(T.numpy(), X, rtol=0, atol=1e-14)


def test_all_finite_finds_every_non_finite_entry_and_survives_overflowing_sums():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 2, 64))
    assert all_finite(X)
    huge = np.full((300, 2, 64), 1e306)  # finite, but the one-pass sum overflows
    assert all_finite(huge)
    for bad in (np.nan, np.inf, -np.inf):
        Y = X.copy()
        Y[217, 1, 40] = bad
        assert not all_finite(Y)
    Y = X.copy()
    Y[3, 0, 0], Y[4, 0, 0] = np.inf, -np.inf  # opposite infinities in different rows
    assert not all_finite(Y)
    with pytest.raises(QueryShapeError, match="NaN or infinite"):
        Oracle(lambda Z: Z[:, -1, 0], d=64)(Y)


def test_duplicates_are_merged_exactly_and_paid_once_on_both_oracles():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((2000, 2, 16))
    X[1999] = X[0]
    X[1000] = X[5]
    first, inverse = distinct_queries(X)
    assert first.size == 1998
    np.testing.assert_array_equal(X[first][inverse], X)
    head = SingleHeadAttention.random(16, seed=0)
    for oracle in (Oracle(head, d=16), DeviceOracle(head, d=16)):
        batch = torch.from_numpy(X.copy()) if isinstance(oracle, DeviceOracle) else X
        y = oracle(batch)
        assert oracle.paid == 1998 and oracle.queries == 2000
        assert y[1999] == y[0] and y[1000] == y[5]
    distinct = rng.standard_normal((2000, 2, 16))
    assert distinct_queries(distinct)[0].size == 2000


def test_far_apart_says_all_distinct_only_when_distinct_queries_finds_no_candidates():
    """The Oracles' shortcut (one sort of the hashes) agrees with `distinct_queries`: True only
    where no two hashes are near, False for exact and near repeats and for non-finite hashes, and
    both Oracles still merge exact repeats and keep near ones apart."""
    from attnlab.oracle.checks import far_apart, row_hashes

    rng = np.random.default_rng(2)
    X = rng.standard_normal((3000, 2, 16))
    assert far_apart(row_hashes(X))
    near = X.copy()
    near[7] = near[3]
    near[7, 1, 5] += 1e-12  # a different sequence whose hash nearly ties with row 3's
    repeat = X.copy()
    repeat[2999] = repeat[10]
    for batch, distinct in ((near, 3000), (repeat, 2999)):
        hashes = row_hashes(batch)
        assert not far_apart(hashes)
        assert distinct_queries(batch, hashes)[0].size == distinct
        head = SingleHeadAttention.random(16, seed=0)
        for oracle in (Oracle(head, d=16), DeviceOracle(head, d=16)):
            oracle(torch.from_numpy(batch) if isinstance(oracle, DeviceOracle) else batch)
            assert oracle.paid == distinct and oracle.queries == 3000
    for bad in (np.nan, np.inf):
        hashes = row_hashes(X)
        hashes[5] = bad
        assert not far_apart(hashes)
    assert far_apart(np.array([1.0])) and far_apart(np.empty(0))
