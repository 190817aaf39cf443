import json

import numpy as np

from attnlab.report.claims import Claim, Context, Measurement
from attnlab.report.figures import line_plot
from attnlab.report.html import write_report

from browser import assert_report_sound, inspect_page


def _claims(tmp_path):
    ctx = Context(quick=True, out_dir=tmp_path)

    def good(ctx):
        x = np.arange(1, 5)
        fig = line_plot(
            ctx.figure_path("demo.png"), {"y = x^2": (list(x), list(x**2))}, "x", "y", "demo"
        )
        return Measurement(
            "4 points", True, table=[{"x": 1, "y": 1.0}], figures=[fig], config={"seed": 3}
        )

    def broken(ctx):
        raise RuntimeError("solver diverged")

    def missed(ctx):
        return Measurement("error 0.3 > 0.1", False)

    return ctx, [
        Claim("good", "A", "A good claim", "x squared", good).run(ctx),
        Claim("broken", "B", "A broken check", "s", broken).run(ctx),
        Claim("missed", "B", "A missed claim", "s", missed).run(ctx),
    ]


def test_claim_runner_records_status_and_errors(tmp_path):
    _, (good, broken, missed) = _claims(tmp_path)
    assert good.status == "reproduced" and good.figures == ["demo.png"]
    assert broken.status == "error" and "solver diverged" in broken.error
    assert missed.status == "not reproduced"


def test_report_is_self_contained_and_renders_in_chromium(tmp_path):
    ctx, results = _claims(tmp_path)
    path = write_report(results, ctx.out_dir, quick=True, command="attnlab reproduce --quick")
    html = path.read_text()
    assert "data:image/png;base64," in html and 'src="figures/' not in html
    data = json.loads((tmp_path / "report.json").read_text())
    assert [c["status"] for c in data["claims"]] == ["reproduced", "error", "not reproduced"]
    facts = inspect_page(path, screenshot=tmp_path / "shot.png")
    assert_report_sound(facts)
    assert len(facts["images"]) == 1
    assert "1 of 3 claims reproduced" in facts["text"]
    assert (tmp_path / "shot.png").stat().st_size > 1000
