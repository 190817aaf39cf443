"""The multi-head commands and the example: JSON on the last line, clean errors, real numbers."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app

from helpers import last_json

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_demo_prints_an_equivalent_pair_and_the_evidence():
    result = runner.invoke(
        app, ["multihead", "demo", "--d", "3", "--heads", "2", "--samples", "500", "--json"]
    )
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert out["heads_p"] == 2 and out["heads_q"] == 4 and out["canonical_heads"] == 2
    assert out["max_map_difference"] <= 1e-12 and out["single_head_probe_difference"] <= 1e-12
    assert out["canonical_forms_agree"] is True
    assert len(out["q"]["v"]) == 4 and len(out["p"]["W"]) == 2


def test_demo_table_output():
    result = runner.invoke(app, ["multihead", "demo", "--d", "3", "--samples", "100"])
    assert result.exit_code == 0, result.output
    assert "compute the same map" in result.output and "canonical_forms_agree" in result.output


def test_extract_multi_head_reports_queries_error_and_bound():
    result = runner.invoke(
        app,
        [
            "extract",
            "multi-head",
            "--d",
            "4",
            "--heads",
            "2",
            "--fidelity-samples",
            "100",
            "--no-progress",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert {"queries", "heads_found", "rel_error", "seconds", "bound"} <= out.keys()
    assert out["heads_found"] == 2 and out["rel_error"] <= 1e-8
    assert out["bound"] == 4 * 2 * 16 - 2 * 2 + 1 and out["queries"] < out["bound"]


def test_extract_multi_head_interpolation_method():
    result = runner.invoke(
        app,
        [
            "extract",
            "multi-head",
            "--d",
            "3",
            "--heads",
            "2",
            "--method",
            "interpolation",
            "--fidelity-samples",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert out["method"] == "interpolation" and out["rel_error"] <= 1e-8
    assert out["stage_pairs"] == 3 * 3 * 3  # (2H - 1) answers for each of the d^2 pairs


def test_extract_multi_head_counting_heads():
    result = runner.invoke(
        app,
        [
            "extract",
            "multi-head",
            "--d",
            "3",
            "--heads",
            "2",
            "--max-heads",
            "3",
            "--fidelity-samples",
            "0",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert last_json(result.output)["heads_found"] == 2


def test_extract_orthogonal_heads():
    result = runner.invoke(
        app,
        [
            "extract",
            "orthogonal-heads",
            "--d",
            "6",
            "--dims",
            "2,3",
            "--fidelity-samples",
            "50",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    out = last_json(result.output)
    assert out["queries"] == out["expected_queries"] == 6 + 12
    assert out["rel_error"] <= 1e-10


def test_errors_exit_2_with_a_message_and_no_traceback():
    cases = [
        [
            "extract",
            "multi-head",
            "--d",
            "4",
            "--heads",
            "3",
            "--max-heads",
            "2",
            "--fidelity-samples",
            "0",
        ],
        ["extract", "orthogonal-heads", "--d", "4", "--dims", "3,x"],
        ["extract", "orthogonal-heads", "--d", "4", "--dims", "3,2"],
        ["multihead", "demo", "--d", "0"],
        ["extract", "multi-head", "--d", "3", "--heads", "1", "--method", "magic"],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output and "error" in result.output.lower()


@pytest.mark.slow
def test_example_runs(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "multihead_canonical.py"),
            "--d",
            "3",
            "--heads",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "learned 2 canonical heads" in proc.stdout
    error = float(proc.stdout.split("relative error against p's canonical form: ")[1].split()[0])
    assert error <= 1e-8
