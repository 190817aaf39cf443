import re
import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tasks_tour.py"


def test_tasks_tour_runs_and_third_order_solves_match3(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--N", "8", "--n", "30", "--seed", "1"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "qsa {'N': 8, 'q': 2, 'd_prime': 3}" in out
    wrong, total = map(int, re.search(r"(\d+) wrong bits out of (\d+)", out).groups())
    assert (wrong, total) == (0, 8 * 30)
    assert "eps = 1/(2q) = 0.250" in out
