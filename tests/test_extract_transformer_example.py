import runpy
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "extract_transformer.py"


def test_example_runs_and_reports_an_exact_extraction(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(EXAMPLE), "--d", "5", "--m", "6", "--residual"])
    runpy.run_path(str(EXAMPLE), run_name="__main__")
    out = capsys.readouterr().out
    assert "neurons found: 6 of 6" in out
    error_of_W = float(out.split("relative error of W: ")[1].split()[0])
    assert error_of_W <= 1e-8
    robust = float(out.split("robust: relative error of W ")[1].split()[0])
    paper = float(out.split("paper: relative error of W ")[1].split()[0])
    assert robust < paper
