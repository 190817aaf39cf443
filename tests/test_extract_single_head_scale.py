"""single_head at scale: chunked probes give the same W as one big batch, the learner's memory does
not grow with d^2 for low rank, oracle_seconds is reported, and the torch-device path (run here on
device="cpu", the same code a GPU runs) recovers the same head."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab import Oracle
from attnlab.cli import app
from attnlab.evaluate import relative_error
from attnlab.extract import single_head
from attnlab.models import AffineHead, SingleHeadAttention
from attnlab.oracle.device import DeviceOracle, DeviceTarget, TimedTarget

from helpers import force_packed_device_path, last_json

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def limit(d, r, affine=False):
    return 2 * r * d - r * r + d + (d + 1 if affine else 0)


@pytest.mark.parametrize("rank,affine", [(None, False), (5, False), ("auto", False), (4, True)])
def test_chunked_probes_give_the_same_W_as_one_batch(rank, affine):
    d = 48
    target_rank = rank if isinstance(rank, int) else (6 if rank == "auto" else None)
    head = (AffineHead if affine else SingleHeadAttention).random(d, rank=target_rank, seed=11)
    calls = {}
    results = {}
    for chunk in (7, 100_000):
        timed = TimedTarget(head)
        result = single_head(
            Oracle(timed, d=d),
            rank=rank,
            affine=affine,
            seed=2,
            fidelity_samples=0,
            method_options={"chunk": chunk},
        )
        results[chunk], calls[chunk] = result, timed.calls
        assert max(timed.largest, 0) <= max(chunk, d + 1)
    small, big = results[7], results[100_000]
    assert small.queries == big.queries
    assert calls[7] > calls[100_000]  # it really was sent in more, smaller calls
    np.testing.assert_allclose(small.W, big.W, rtol=0, atol=1e-12 * np.abs(big.W).max())
    assert relative_error(small.W, head.W.detach().numpy()) <= 1e-9


def test_low_rank_learner_memory_is_far_below_d_squared():
    d, r = 512, 4
    head = SingleHeadAttention.random(d, rank=r, seed=1)
    oracle = Oracle(head, d=d)
    tracemalloc.start()
    try:
        result = single_head(oracle, rank=r, fidelity_samples=0, method_options={"chunk": 64})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.queries == limit(d, r)
    # the d x d result itself is 2 MiB; the probes, directions and factors a small fraction more
    # (a dense d x d basis, as before, would add 2 MiB each, and all probes at once 16 MiB per column)
    assert peak < 1.6 * d * d * 8, peak


def test_oracle_seconds_is_reported_and_bounded_by_seconds():
    d = 24
    timed = TimedTarget(SingleHeadAttention.random(d, seed=0))
    result = single_head(Oracle(timed, d=d), fidelity_samples=0)
    oracle_seconds = result.info["oracle_seconds"]
    assert timed.seconds <= oracle_seconds <= result.seconds
    assert result.info["oracle_calls"] == timed.calls


def test_cli_json_reports_oracle_seconds_beside_seconds():
    run = CliRunner().invoke(
        app,
        [
            "extract",
            "single-head",
            "--d",
            "12",
            "--rank",
            "3",
            "--json",
            "--no-progress",
            "--fidelity-samples",
            "0",
        ],
    )
    assert run.exit_code == 0, run.output
    report = last_json(run.stdout)
    assert 0 < report["oracle_seconds"] <= report["seconds"]


@pytest.mark.parametrize("rank,affine", [(None, False), (3, False), ("auto", False), (3, True)])
def test_device_oracle_on_cpu_recovers_the_same_head(rank, affine):
    d = 40
    target_rank = rank if isinstance(rank, int) else (4 if rank == "auto" else None)
    head = (AffineHead if affine else SingleHeadAttention).random(d, rank=target_rank, seed=5)
    host = single_head(Oracle(head, d=d), rank=rank, affine=affine, fidelity_samples=0)
    oracle = DeviceOracle(head, d=d, device="cpu")
    device = single_head(oracle, rank=rank, affine=affine, fidelity_samples=200)
    assert (
        device.queries
        == host.queries
        == limit(d, device.info["rank"], affine) + (4 if rank == "auto" else 0)
    )
    assert oracle.paid == device.queries + device.fidelity_queries
    np.testing.assert_allclose(device.W, host.W, rtol=0, atol=1e-11 * np.abs(host.W).max())
    assert device.fidelity <= 1e-9


def test_device_oracle_answers_repeats_once_and_keeps_the_budget():
    d = 6
    head = SingleHeadAttention.random(d, seed=0)
    oracle = DeviceOracle(DeviceTarget(head, "cpu"), d=d, budget=5)
    X = torch.randn(3, 2, d, dtype=torch.float64)
    y = oracle(torch.cat([X, X[:1]]))
    np.testing.assert_allclose(y, head(X[[0, 1, 2, 0]]).detach().numpy(), rtol=1e-15)
    assert oracle.queries == 4 and oracle.paid == 3
    from attnlab import BudgetExhausted

    with pytest.raises(BudgetExhausted):
        oracle(torch.randn(3, 2, d, dtype=torch.float64))
    assert oracle.paid == 3
    with pytest.raises(ValueError, match="noise"):
        DeviceOracle(head, d=d, noise=lambda y, X, rng: y)
    with pytest.raises(Exception, match="width"):
        oracle(torch.randn(1, 2, d + 1, dtype=torch.float64))


def test_device_oracle_refuses_non_finite_queries_before_paying():
    d = 4
    oracle = DeviceOracle(SingleHeadAttention.random(d, seed=0), d=d)
    X = torch.randn(3, 2, d, dtype=torch.float64)
    X[1, 0, 2] = float("nan")
    with pytest.raises(Exception, match="NaN or infinite"):
        oracle(X)
    assert oracle.paid == 0


def test_query_buffer_rewrites_only_what_changed_and_holds_the_plain_probes():
    """Whatever a slot held before, after a write it holds bit for bit what the same write puts
    into a buffer that held nothing: the reuse of constant rows (row reads, column reads, zero
    rows) and the entries moved back and forth must leave nothing stale behind."""
    from attnlab.extract.single_head.directions import (
        AlignedBasis,
        DenseDirections,
        ShiftedCoordinates,
    )
    from attnlab.extract.single_head.query_buffer import QueryBuffer
    from attnlab.oracle.checks import row_hashes

    d, chunk = 24, 12
    rng = np.random.default_rng(4)
    A = AlignedBasis(rng.standard_normal(d), rng)
    S = ShiftedCoordinates(rng.standard_normal(d))
    Q = DenseDirections(rng.standard_normal((5, d)))
    buffer = QueryBuffer(None, chunk, d)
    buffer.view[:] = np.nan

    def rows_of(blocks):  # table row of each slot, blocks of equal size
        return np.repeat(np.arange(len(blocks)), blocks)

    def scales(n, low=0.2, high=1.5):
        return rng.uniform(low, high, n)

    keys = buffer.new_keys(4)
    table_a = rng.standard_normal((3, d))  # constant first-token rows (row reads)
    table_b = rng.standard_normal((3, d))  # constant second-token rows (column reads)
    block_mu = rng.uniform(0.2, 1.5, 3)
    table_s = S.shifted_rows(block_mu, table_b)  # shifted column reads' first-token rows
    steps = []
    for step in range(40):
        kinds = ["row", "row", "column", "shifted", "column", "shifted", "full", "plain"]
        kind = kinds[step % 8 if step > 8 else 0]
        if step in (5, 6, 7):
            kind = "column" if step < 7 else "shifted"
        n = int(rng.integers(1, chunk + 1))
        block_rows = np.sort(rng.integers(0, 3, n))
        if step % 7 == 3:
            keys = buffer.new_keys(4)  # a new stage: the same rows under new keys
        if step % 11 == 5:
            block_rows = rows_of([n])  # one block
        if steps and step % 3 == 1 and steps[-1][0] in ("row", "column", "shifted"):
            steps.append(steps[-1])  # the next chunk of the same layout: the very same arrays
            continue
        steps.append((kind, n, keys + block_rows, block_rows))
    assert sum(a is b for a, b in zip(steps, steps[1:])) >= 5
    for step, (kind, n, k, r) in enumerate(steps):
        cols = rng.integers(0, d, n)
        ai = rng.integers(0, d, n)
        mu, nu = scales(n), scales(n)
        fresh = QueryBuffer(None, chunk, d)
        fresh.view[:] = np.nan
        for target in (buffer, fresh):
            if kind == "row":
                target.write_row_reads(n, k, r, table_a, cols, nu)
            elif kind == "column":
                target.write_column_reads(n, k, r, table_b, A, ai, mu)
            elif kind == "shifted":
                target.write_shifted_column_reads(n, k, r, table_s, table_b, ai, block_mu[r])
            elif kind == "full":
                target.write_coordinate_reads(n, A, ai, mu, cols, nu)
            else:
                target.write_plain(n, Q, ai % 5, mu, Q, cols % 5, nu)
        np.testing.assert_array_equal(buffer.view[:n], fresh.view[:n], err_msg=f"{step} {kind}")
        # and the pad's kept hashes are those of the entries (what the Oracle takes instead of
        # its own pass over the batch)
        np.testing.assert_allclose(
            buffer.pad.hashes(n), row_hashes(buffer.view[:n]), rtol=1e-12, err_msg=f"{step} {kind}"
        )
    # the batched product of equal blocks writes what the per-row product writes, to rounding
    n, block = 12, 4
    r = rows_of([block] * 3)
    ai, mu = rng.integers(0, d, n), scales(n)
    plain, batched = QueryBuffer(None, chunk, d), QueryBuffer(None, chunk, d)
    k = plain.new_keys(3) + r
    plain.write_column_reads(n, k, r, table_b, A, ai, mu)
    batched.write_column_reads(n, k, r, table_b, A, ai, mu, block)
    np.testing.assert_allclose(batched.view[:n], plain.view[:n], rtol=0, atol=1e-15)
    expected = mu[:, None] * A.dense().T[ai] + table_b[r]
    np.testing.assert_allclose(plain.view[:n, 0], expected, rtol=0, atol=1e-14)
    np.testing.assert_array_equal(plain.view[:n, 1], table_b[r])
    # shifted column reads hold bit for bit what the family's own writer writes: mu a_ai + nu q
    assert sum(kind == "shifted" for kind, *_ in steps) >= 4
    shifted = QueryBuffer(None, chunk, d)
    shifted.write_shifted_column_reads(n, k, r, table_s, table_b, ai, block_mu[r])
    expected = np.empty((n, d))
    S.write_scaled_plus(expected, ai, block_mu[r], table_b[r])
    np.testing.assert_array_equal(shifted.view[:n, 0], expected)
    np.testing.assert_allclose(
        expected, block_mu[r][:, None] * S.dense().T[ai] + table_b[r], rtol=0, atol=1e-14
    )
    np.testing.assert_array_equal(shifted.view[:n, 1], table_b[r])


def test_deal_fills_chunks_evenly_and_never_past_a_segment():
    from attnlab.extract.single_head.dealing import deal

    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(deal(np.array([427] * 64), 2048), [32] * 64)
    np.testing.assert_array_equal(deal(np.array([11] * 64), 2048), [11] * 64)  # all fit
    for _ in range(200):
        chunk = int(rng.integers(1, 300))
        remaining = rng.integers(1, 500, int(rng.integers(1, chunk + 1)))
        blocks = deal(remaining, chunk)
        assert np.all(blocks >= 1) and np.all(blocks <= remaining)
        assert blocks.sum() == min(chunk, remaining.sum())
        assert blocks.max() - blocks[blocks < remaining].min(initial=blocks.max()) <= 1


@pytest.mark.parametrize("rank", [None, 4, "auto"])
def test_packed_device_path_reads_the_same_W_as_the_dealt_host_path(rank, monkeypatch):
    """The device reader (segments packed into chunks, written by the torch writer) and the host
    reader (lines dealt out to slot blocks) send the same probes: same count, same W."""

    d = 40
    head = SingleHeadAttention.random(d, rank=None if rank is None else 4, seed=7)
    host = single_head(
        DeviceOracle(head, d=d, device="cpu"),
        rank=rank,
        seed=3,
        fidelity_samples=0,
        method_options={"chunk": 50},
    )
    force_packed_device_path(monkeypatch)
    packed = single_head(
        DeviceOracle(head, d=d, device="cpu"),
        rank=rank,
        seed=3,
        fidelity_samples=0,
        method_options={"chunk": 50},
    )
    assert packed.queries == host.queries
    np.testing.assert_allclose(packed.W, host.W, rtol=0, atol=1e-11 * np.abs(host.W).max())
    assert relative_error(host.W, head.W.detach().numpy()) <= 1e-9


def test_reader_reuses_rows_and_still_reads_W_exactly():
    """A low-rank read through a numpy Oracle, with lines longer than a chunk so that rows are
    reused across chunks, reads W to float64 precision at exactly the limit."""
    d, r = 96, 3
    head = SingleHeadAttention.random(d, rank=r, seed=3)
    timed = TimedTarget(head)
    result = single_head(
        Oracle(timed, d=d), rank=r, seed=1, fidelity_samples=0, method_options={"chunk": 40}
    )
    assert result.queries == limit(d, r)
    assert relative_error(result.W, head.W.detach().numpy()) <= 1e-10


def test_trackers_see_the_same_readings_whatever_the_observe_batch(monkeypatch):
    """`dealing.observe` feeds each line's tracker its segment's readings in bounded batches: the
    counts and peaks are exact and the sums agree to rounding with one observe() per segment."""
    from attnlab.extract.single_head import dealing
    from attnlab.extract.single_head.probes import ScaleTracker

    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, 30)
    out = rng.standard_normal(int(lengths.sum()))
    base = np.cumsum([0, *lengths])[:-1]
    lines = dealing.Lines(*([None] * 8), out, base, 0.0, 1.0)  # type: ignore[arg-type]
    segments = [
        (i, slice(int(rng.integers(0, n)), int(n)), 1.0, 1.0) for i, n in enumerate(lengths)
    ]
    reference = [ScaleTracker() for _ in lengths]
    for i, rows, _, _ in segments:
        reference[i].observe(out[base[i] + rows.start : base[i] + rows.stop])
    for batch in (1 << 20, 7, 1):
        monkeypatch.setattr(dealing, "OBSERVE_BATCH", batch)
        trackers = [ScaleTracker() for _ in lengths]
        dealing.observe(trackers, lines, segments)
        for got, want in zip(trackers, reference, strict=True):
            assert got.count == want.count and got._max_abs == want._max_abs
            assert got._sum_sq == pytest.approx(want._sum_sq, rel=1e-14)


@pytest.mark.parametrize("rank,affine", [(5, False), (None, False), (4, True)])
def test_deferred_inversion_reads_the_same_bits_whatever_it_holds(rank, affine, monkeypatch):
    """The reader inverts the weights of several chunks at once (`dealing.DEFER_READINGS`): how
    many it holds changes nothing, to the last bit."""
    from attnlab.extract.single_head import dealing

    d = 32
    head = (AffineHead if affine else SingleHeadAttention).random(d, rank=rank, seed=4)
    results = []
    for held in (1, 20, 1 << 16):
        monkeypatch.setattr(dealing, "DEFER_READINGS", held)
        results.append(
            single_head(
                Oracle(head, d=d),
                rank=rank,
                affine=affine,
                seed=1,
                fidelity_samples=0,
                method_options={"chunk": 9},
            )
        )
    for other in results[1:]:
        assert other.queries == results[0].queries
        np.testing.assert_array_equal(other.W, results[0].W)
    assert relative_error(results[0].W, head.W.detach().numpy()) <= 1e-9
