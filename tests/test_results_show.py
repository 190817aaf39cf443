"""`attnlab results show` on a real store: 80 columns, 'not reached' and counts, never None/nan."""

import re

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.experiments.store import ResultStore
from attnlab.experiments.sweep import run_sweep

from helpers import tiny_sweep


def _sweep():
    grids = [{"model.arch": ["attention", "lstm", "mlp"], "train.n_train": [16, 32, 64]}]
    return tiny_sweep(name="show", seeds=(0, 1, 2), max_steps=8, grids=grids)


@pytest.mark.slow
def test_results_show_fits_80_columns_with_counts_and_not_reached(tmp_path):
    store = tmp_path / "r.sqlite"
    assert run_sweep(_sweep(), store, workers=2).failed == 0
    result = CliRunner().invoke(app, ["results", "show", "--store", str(store)])
    out = result.output
    assert result.exit_code == 0, out
    assert max(len(line) for line in out.splitlines()) <= 80
    for word in ("None", "nan", "100%"):
        assert word not in out, word
    with ResultStore(store) as results:
        records = results.records()
    reached = {}
    for r in records:
        key = (r["config"]["model"]["arch"], r["config"]["train"]["n_train"])
        reached.setdefault(key, []).append(bool(r["metrics"]["reached_threshold"]))
    # each row ends with "<seeds within>/<seeds>", counted from the store
    counts = re.findall(r"\s(\d)/3\s*$", out, flags=re.M)
    assert sorted(map(int, counts)) == sorted(sum(v) for v in reached.values())
    assert len(counts) == 9
    if not all(all(v) for v in reached.values()):  # 8 steps: some model never gets within 1/(2q)
        assert "not reached" in out
