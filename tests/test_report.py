import json

import numpy as np
import pytest

from attnlab.report.claims import Claim, Context, Measurement
from attnlab.report.figures import line_plot
from attnlab.report.html import SUMMARY_WIDTH, write_report

from browser import CHROMIUM_FLAGS, PAPER_URLS, assert_report_sound, chromium_path, inspect_page

LONG_FINDING = (
    "Canonical heads to within 1e-8 relative error with 1286 queries against the published bound "
    "of 4089, at H = 4 and d = 16, which is 0.31 of the bound and 1.18 times the free parameters "
    "of the canonical form"
)


def _claims(tmp_path):
    ctx = Context(quick=True, out_dir=tmp_path)

    def good(ctx):
        x = np.arange(1, 5)
        fig = line_plot(
            ctx.figure_path("demo.png"), {"y = x^2": (list(x), list(x**2))}, "x", "y", "demo"
        )
        return Measurement(
            "4 points",
            True,
            table=[{"d": 8, "rel error W": 1e-12, "d^2+d": 72, "ok": True}],
            figures=[fig],
            config={"seed": 3},
        )

    def broken(ctx):
        raise RuntimeError("solver diverged")

    def missed(ctx):
        return Measurement(LONG_FINDING, False)

    return ctx, [
        Claim("exact-single-head", "A", "A good claim", "x squared", good).run(ctx),
        Claim("qsa-width-q-log-n", "B", "A broken check", "s", broken).run(ctx),
        Claim("multihead-canonical", "A", "A missed claim", "s", missed).run(ctx),
    ]


def test_claim_runner_records_status_and_errors(tmp_path):
    _, (good, broken, missed) = _claims(tmp_path)
    assert good.status == "reproduced" and good.figures == ["demo.png"]
    assert broken.status == "error" and "solver diverged" in broken.error
    assert missed.status == "not reproduced"
    assert good.finished_at and good.seconds >= 0 and not good.cached


def test_report_is_self_contained_and_renders_in_chromium(tmp_path):
    ctx, results = _claims(tmp_path)
    path = write_report(results, ctx.out_dir, quick=True, command="attnlab reproduce --quick")
    html = path.read_text()
    assert "data:image/png;base64," in html and 'src="figures/' not in html
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["status"] for c in data["claims"]] == ["reproduced", "error", "not reproduced"]
    assert data["complete"] and data["code_version"]
    facts = inspect_page(path, screenshot=tmp_path / "shot.png")
    assert_report_sound(facts)
    assert PAPER_URLS <= set(facts["links"])  # every paper is linked
    assert len(facts["images"]) == 1
    assert "1 of 3 claims reproduced" in facts["text"]
    assert (tmp_path / "shot.png").stat().st_size > 1000


def test_report_names_the_papers_and_cites_theorems(tmp_path):
    ctx, results = _claims(tmp_path)
    html = write_report(results, ctx.out_dir, quick=True, command="c").read_text()
    assert "Provably Learning Attention with Queries" in html
    assert "Kulin Shah, Michael Hahn, Satwik Bhattamishra, Varun Kanade" in html
    assert "Representational Strengths and Limitations of Transformers" in html
    assert "Clayton Sanford, Daniel Hsu, Matus Telgarsky" in html
    assert "https://arxiv.org/abs/2306.02896" in html and "https://arxiv.org/abs/2601.16873" in html
    assert "Provably Learning Multi-Head Attention with Queries" in html
    assert "https://arxiv.org/abs/2608.03294" in html
    assert "Theorem 4.1" in html and "Theorem 2" in html
    assert "How to read this report" in html and "smoke checks" in html


def test_tables_use_human_headers_and_bookkeeping_stays_out_of_findings(tmp_path):
    ctx, results = _claims(tmp_path)
    path = write_report(results, ctx.out_dir, quick=False, command="c")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(path.resolve().as_uri(), wait_until="load")
            facts = page.evaluate("""() => ({
                summaryHeads: Array.from(document.querySelectorAll('#summary th')).map(t => t.innerText),
                claimHeads: Array.from(document.querySelectorAll('#exact-single-head th')).map(t => t.innerText),
                bookHeads: Array.from(document.querySelectorAll('#bookkeeping th')).map(t => t.innerText),
                summaryCells: Array.from(document.querySelectorAll('#summary td')).map(t => t.innerText),
                figure: (() => { const img = document.querySelector('figure img');
                                 return {img: img.clientWidth, section: img.closest('section').clientWidth}; })(),
            })""")
        finally:
            browser.close()
    assert facts["summaryHeads"] == ["claim", "source", "verdict", "measured"]  # no seconds
    assert facts["bookHeads"][:2] == ["claim", "seconds"]
    assert facts["claimHeads"] == ["d", "relative error of W", "d² + d (Thm 4.1)", "within bound"]
    assert facts["figure"]["img"] == facts["figure"]["section"] > 900  # full width
    finding = next(c for c in facts["summaryCells"] if c.startswith("Canonical heads"))
    assert finding.endswith("…") and len(finding) <= SUMMARY_WIDTH
    kept = finding[:-1]
    assert LONG_FINDING.startswith(kept) and LONG_FINDING[len(kept)] in " ,;:"  # between words


def test_partial_report_lists_pending_claims(tmp_path):
    ctx, results = _claims(tmp_path)
    write_report(results[:1], ctx.out_dir, quick=True, command="c", pending=["qsa-lower-bound"])
    html = (tmp_path / "report.html").read_text()
    assert "Partial report" in html and "qsa-lower-bound" in html
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["complete"] is False and data["pending"] == ["qsa-lower-bound"]
    assert not list(tmp_path.glob(".report.*.tmp"))  # atomic writes leave no temporary file


def test_report_soundness_allows_the_papers_and_nothing_else_outside():
    page = {"images": [{"complete": True, "width": 1, "height": 1, "alt": "f"}], "ids": ["s"]}
    page["errors"] = []
    assert_report_sound({**page, "links": ["#s", *sorted(PAPER_URLS)]})
    with pytest.raises(AssertionError, match="not to a paper"):
        assert_report_sound({**page, "links": ["https://example.com/"]})
    with pytest.raises(AssertionError, match="broken link"):
        assert_report_sound({**page, "links": ["#missing"]})


def test_training_claim_is_keyed_on_the_committed_grid():
    """A new committed grid export must change the training claim's cache key."""
    from attnlab.report import CLAIMS
    from attnlab.report.training import COMMITTED

    assert CLAIMS["qsa-training-samples"].inputs == (COMMITTED,)
