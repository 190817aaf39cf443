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


@pytest.mark.parametrize("args,checks", [
    (["qsa", "--N", "32", "--q", "2", "--n", "1"], {"theorem": 2, "passed": True}),
    (["qsa", "--N", "16", "--q", "2", "--theorem", "3", "--n", "1"], {"theorem": 3, "m": 8, "passed": True}),
    (["match2", "--N", "16", "--M", "11", "--n", "4"], {"m": 2, "bit_errors": 0}),
    (["match3", "--N", "10", "--M", "13", "--n", "4"], {"m": 4, "bit_errors": 0}),
    (["match3", "--N", "12", "--M", "7", "--local", "--window", "1", "--n", "4"], {"heads": 1, "bit_errors": 0}),
    (["disjointness", "--q", "6", "--m", "5"], {"solves": False, "distinct_messages": 32}),
])
def test_construct_commands_print_one_json_object_last(args, checks):
    result = runner.invoke(app, ["construct", *args, "--json"])
    assert result.exit_code == 0, result.output
    payload = last_json(result.output)
    for key, value in checks.items():
        assert payload[key] == value
    assert "p" in payload or "precision" in payload


def test_table_output_and_clean_errors():
    table = runner.invoke(app, ["construct", "match2", "--N", "8", "--M", "5", "--p", "20"])
    assert table.exit_code == 0 and "bit_errors" in table.output
    for bad in (["qsa", "--N", "4", "--q", "8"], ["qsa", "--theorem", "5"], ["match2", "--M", "1"],
                ["disjointness", "--design", "magic"]):
        result = runner.invoke(app, ["construct", *bad])
        assert result.exit_code == 2, (bad, result.output)
        assert "Traceback" not in result.output


def test_example_runs_with_small_arguments():
    completed = subprocess.run([sys.executable, str(ROOT / "examples" / "constructions_tour.py"),
                                "--N", "24", "--q", "2", "--M", "11"],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert "passes" in completed.stdout and "0 wrong bits" in completed.stdout
    assert "fails: witness" in completed.stdout
