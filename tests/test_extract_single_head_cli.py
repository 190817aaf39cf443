"""`attnlab extract single-head` through typer's CliRunner, and the example script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app

from helpers import last_json

runner = CliRunner()
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "extract_single_head.py"


def run_json(*args: str) -> dict:
    result = runner.invoke(app, ["extract", "single-head", *args, "--json", "--no-progress"])
    assert result.exit_code == 0, result.output
    return last_json(result.stdout)


def test_full_rank_json_report():
    report = run_json("--d", "10", "--scale", "3", "--fidelity-samples", "200")
    assert report["method"] == "adaptive"
    assert report["queries"] == report["dof"] == 110
    assert report["rank"] == 10
    assert report["rel_error_W"] <= 1e-9 and report["rel_error_v"] <= 1e-9
    assert report["fidelity"] <= 1e-9
    assert report["fidelity_queries"] == 200
    assert report["seconds"] > 0


def test_auto_rank_finds_the_target_rank():
    report = run_json(
        "--d", "24", "--rank", "auto", "--target-rank", "3", "--fidelity-samples", "0"
    )
    assert report["rank"] == 3
    assert report["dof"] == 2 * 3 * 24 - 9 + 24
    assert report["queries"] == report["dof"] + 4  # two check rows, two dense checks
    assert report["rel_error_W"] <= 1e-8
    assert report["fidelity"] is None


def test_known_rank_defaults_the_target_to_that_rank():
    report = run_json("--d", "30", "--rank", "2", "--fidelity-samples", "0")
    assert report["queries"] == report["dof"] == 2 * 2 * 30 - 4 + 30
    assert report["rel_error_W"] <= 1e-8


def test_affine_reports_bias_errors():
    report = run_json(
        "--d", "8", "--affine", "--method", "paper", "--scale", "0.2", "--fidelity-samples", "0"
    )
    assert report["queries"] == report["dof"] == 64 + 8 + 9
    for name in ("W", "v", "u", "c"):
        assert report[f"rel_error_{name}"] <= 1e-9


def test_nuclear_norm_with_measurements():
    report = run_json(
        "--d",
        "12",
        "--rank",
        "1",
        "--method",
        "nuclear-norm",
        "--measurements",
        "80",
        "--fidelity-samples",
        "0",
    )
    assert report["queries"] == 80 + 12
    assert report["rel_error_W"] <= 1e-8


def test_table_output_names_the_quantities():
    result = runner.invoke(
        app, ["extract", "single-head", "--d", "4", "--fidelity-samples", "0", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    for word in ("queries", "dof", "rel_error_W", "fidelity"):
        assert word in result.stdout


@pytest.mark.parametrize(
    "args,message",
    [
        (["--d", "6", "--method", "magic"], "nuclear-norm"),
        (["--d", "6", "--rank", "7"], "--rank"),
        (["--d", "6", "--rank", "lots"], "--rank"),
        (["--d", "6", "--target-rank", "0"], "--target-rank"),
        (["--d", "6", "--method", "paper", "--measurements", "5"], "measurements"),
    ],
)
def test_bad_options_fail_cleanly(args, message):
    result = runner.invoke(app, ["extract", "single-head", *args, "--json"])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_saturating_paper_run_fails_cleanly():
    result = runner.invoke(
        app, ["extract", "single-head", "--d", "48", "--method", "paper", "--scale", "10"]
    )
    assert result.exit_code == 2
    assert "saturated" in result.output


@pytest.mark.slow
def test_example_runs_with_small_arguments():
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--d", "8", "--rank", "2", "--fidelity-samples", "50"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "found rank 2" in done.stdout
    assert "MultiheadAttention" in done.stdout
