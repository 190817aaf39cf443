"""`attnlab construct ...` and the constructions example, run as a user would."""

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from attnlab.cli import app

from helpers import last_json

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.mark.parametrize(
    "args,checks",
    [
        (["qsa", "--N", "32", "--q", "2", "--n", "1"], {"theorem": 2, "passed": True}),
        (
            ["qsa", "--N", "16", "--q", "2", "--theorem", "3", "--n", "1"],
            {"theorem": 3, "m": 8, "passed": True},
        ),
        (
            ["match2", "--N", "16", "--M", "11", "--n", "4"],
            {"m": 3, "residual": False, "bit_errors": 0},
        ),
        (
            ["match2", "--N", "16", "--M", "11", "--n", "4", "--residual"],
            {"m": 2, "residual": True, "m_including_residual": 3, "bit_errors": 0},
        ),
        (
            ["match3-lower-bound", "--n", "3"],
            {"reduction_exact": True, "wrong_bits_all_pairs": 0, "witness": None},
        ),
        (["match3-lower-bound", "--n", "3", "--m", "2"], {"reduction_exact": True}),
        (["match3", "--N", "10", "--M", "13", "--n", "4"], {"m": 4, "bit_errors": 0}),
        (
            ["match3", "--N", "12", "--M", "7", "--local", "--window", "1", "--n", "4"],
            {"heads": 1, "bit_errors": 0},
        ),
        (["disjointness", "--q", "6", "--m", "5"], {"solves": False, "distinct_messages": 32}),
    ],
)
def test_construct_commands_print_one_json_object_last(args, checks):
    result = runner.invoke(app, ["construct", *args, "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.output)
    for key, value in checks.items():
        assert payload[key] == value
    assert "p" in payload or "precision" in payload or "reduction_exact" in payload


BAD_VALUES = [
    ["qsa", "--N", "4", "--q", "8"],
    ["qsa", "--theorem", "5"],
    ["qsa", "--q", "0"],
    ["qsa", "--q", "-3"],
    ["qsa", "--eps", "0"],
    ["qsa", "--eps", "1.5"],
    ["qsa", "--N", "0"],
    ["qsa", "--d-prime", "0"],
    ["qsa", "--p", "0"],
    ["qsa", "--n", "0"],
    ["qsa", "--certificate", "magic"],
    ["match2", "--M", "1"],
    ["match2", "--N", "0"],
    ["match2", "--p", "0"],
    ["match2", "--n", "0"],
    ["match3", "--M", "0"],
    ["match3", "--N", "0"],
    ["match3", "--local", "--window", "-1"],
    ["match3", "--p", "-2"],
    ["disjointness", "--design", "magic"],
    ["disjointness", "--q", "0"],
    ["disjointness", "--q", "40"],
    ["disjointness", "--m", "0"],
    ["disjointness", "--p", "0"],
    ["match3-lower-bound", "--n", "0"],
    ["match3-lower-bound", "--n", "3", "--m", "9"],
]


@pytest.mark.parametrize("bad", BAD_VALUES, ids=[" ".join(b) for b in BAD_VALUES])
def test_bad_values_print_one_clear_line_and_exit_2(bad):
    result = runner.invoke(app, ["construct", *bad])
    assert result.exit_code == 2, (bad, result.output)
    assert (
        "Traceback" not in result.output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    )
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "error" in lines[0].lower(), result.output


def test_table_output():
    table = runner.invoke(app, ["construct", "match2", "--N", "8", "--M", "5", "--p", "20"])
    assert table.exit_code == 0 and "bit_errors" in table.output


@pytest.mark.parametrize("N,q", [(64, 2), pytest.param(256, 4, marks=pytest.mark.slow)])
def test_construct_qsa_passes_its_own_verification_at_the_width_it_reports(N, q):
    result = runner.invoke(app, ["construct", "qsa", "--N", str(N), "--q", str(q), "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.output)
    for key in (
        "m",
        "key_dim",
        "random_max_error",
        "adversarial_max_error",
        "passed",
        "certificate",
    ):
        assert key in payload
    assert payload["certificate"] == "softmax-leak" and payload["passed"] is True
    assert max(payload["random_max_error"], payload["adversarial_max_error"]) <= payload["eps"]
    assert payload["m"] == payload["key_dim"] + 4
    if N >= 256:
        assert payload["key_dim"] < N  # a real random design, not the one-hot fallback


@pytest.mark.slow
def test_example_runs_with_small_arguments():
    completed = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "constructions_tour.py"),
            "--N",
            "24",
            "--q",
            "2",
            "--M",
            "11",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr
    assert "passes" in completed.stdout and "0 wrong bits" in completed.stdout
    assert "fails: witness" in completed.stdout
