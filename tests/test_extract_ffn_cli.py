from typer.testing import CliRunner

from attnlab.cli import app

from helpers import last_json

runner = CliRunner()


def test_extract_ffn_json_reports_exact_recovery():
    result = runner.invoke(
        app, ["extract", "ffn", "--d", "6", "--m", "9", "--bias", "--seed", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["neurons_found"] == 9 and report["orientation"] in ("linear", "milp")
    assert report["functional_error"] <= 1e-8 and report["fidelity"] <= 1e-8
    assert report["queries"] == sum(report[k] for k in report if k.startswith("queries_"))
    assert {"rel_error_rows", "rel_error_w", "rel_error_b", "seconds"} <= report.keys()


def test_extract_transformer_json_splits_queries_by_stage():
    result = runner.invoke(
        app, ["extract", "transformer", "--d", "5", "--m", "6", "--residual", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["queries_attention"] == 2 * (5 * 5 + 5)
    assert report["queries"] == report["queries_ffn"] + report["queries_attention"]
    assert report["rel_error_W"] <= 1e-8 and report["functional_error"] <= 1e-8


def test_cli_errors_are_clean():
    result = runner.invoke(app, ["extract", "ffn", "--d", "0"])
    assert (
        result.exit_code == 2
        and "--d and --m" in result.output
        and "Traceback" not in result.output
    )
