from typer.testing import CliRunner

from attnlab.cli import app

from helpers import last_json

runner = CliRunner()


def test_single_head_with_noise_routes_to_the_robust_extractor():
    result = runner.invoke(
        app,
        [
            "extract",
            "single-head",
            "--d",
            "8",
            "--noise",
            "float32",
            "--json",
            "--fidelity-samples",
            "50",
        ],
    )
    assert result.exit_code == 0, result.output
    report = last_json(result.output)
    assert report["method"] == "robust" and report["queries"] == 72
    assert report["rel_error_W"] <= 1e-4 and report["estimate_W_fro_bound"] > 0


def test_noise_options_are_checked():
    result = runner.invoke(app, ["extract", "single-head", "--d", "8", "--noise", "bounded"])
    assert result.exit_code == 2 and "--tau" in result.output
    result = runner.invoke(
        app,
        ["extract", "single-head", "--d", "8", "--noise", "digits", "--digits", "6", "--affine"],
    )
    assert result.exit_code == 2 and "--affine" in result.output
