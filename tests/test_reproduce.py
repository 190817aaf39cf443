"""`attnlab reproduce --quick` end to end: every claim reproduces, and the report renders in Chromium."""

import json

import pytest
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.report import CLAIMS, select
from attnlab.report.papers import SOURCES

from browser import PAPER_URLS, assert_report_sound, inspect_page
from helpers import last_json


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    result = CliRunner().invoke(
        app, ["reproduce", "--quick", "--out", str(out), "--workers", "2", "--json", "--strict"]
    )
    return out, result


@pytest.mark.slow
def test_quick_reproduction_reproduces_every_claim(quick_run):
    out, result = quick_run
    summary = last_json(result.stdout)
    # the training claim is a smoke check in quick mode: it never marks itself reproduced there
    smoke = {"qsa-training-samples"}
    expected = {key: "reproduced" for key in select() if key not in smoke}
    assert {k: v for k, v in summary["status"].items() if k not in smoke} == expected, summary
    assert summary["status"]["qsa-training-samples"] != "reproduced", summary
    assert result.exit_code == 0
    assert summary["claims"] == len(CLAIMS) >= 14
    report = json.loads((out / "report.json").read_text())
    for c in report["claims"]:
        assert c["config"], f"claim {c['key']} records no config/seeds"
        assert c["paper"] and c["measured"]


@pytest.mark.slow
def test_quick_report_opens_in_chromium_with_every_figure(quick_run):
    out, _ = quick_run
    facts = inspect_page(out / "report.html", screenshot=out / "screenshot.png")
    assert_report_sound(facts)  # outside the page it links only to the papers
    assert PAPER_URLS <= set(facts["links"])  # and to every one of them
    claims = json.loads((out / "report.json").read_text())["claims"]
    figures = sum(len(c["figures"]) for c in claims)
    assert len(facts["images"]) == figures >= 2
    # every claim but the quick-mode training smoke check is reproduced, and the page says so
    reproduced = sum(c["status"] == "reproduced" for c in claims)
    assert reproduced == len(CLAIMS) - 1
    assert f"{reproduced} of {len(CLAIMS)} claims reproduced" in facts["text"]


def test_every_claim_names_its_source():
    assert set(select()) <= set(SOURCES)


def test_help_states_the_measured_quick_time_and_the_cache():
    result = CliRunner().invoke(app, ["reproduce", "--help"], env={"COLUMNS": "200"})
    assert "about 45 s on 2 idle CPU cores" in result.output
    assert "about 4 minutes on 2 CPU cores" in result.output
    assert "--fresh" in result.output and "resumes without redoing" in result.output


def test_unknown_claim_is_a_clean_error():
    result = CliRunner().invoke(app, ["reproduce", "--only", "no-such-claim"])
    assert result.exit_code == 2
    assert "unknown claim" in result.output
