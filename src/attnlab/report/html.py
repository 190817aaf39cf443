"""Write checked claims as one self-contained HTML file (figures embedded) plus a JSON twin."""

from __future__ import annotations

import base64
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from attnlab.report.claims import ClaimResult
from attnlab.report.papers import PAPERS, PART_NAMES, source_of
from attnlab.report.text import human_header, number, shorten

_ENV = jinja2.Environment(autoescape=True)

TEMPLATE_SOURCE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>attnlab reproduction report</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
 table { border-collapse: collapse; margin: .6em 0; font-size: 0.92em; }
 th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; vertical-align: top; }
 th { background: #f3f3f3; }
 td.l, th.l { text-align: left; }
 .reproduced { color: #1a7f37; font-weight: bold; }
 .not-reproduced, .error { color: #b42318; font-weight: bold; }
 .partly-reproduced { color: #9a6700; font-weight: bold; }
 .not-checked, .pending { color: #777; font-weight: bold; }
 section.claim { border-top: 2px solid #ddd; margin-top: 1.5em; padding-top: .5em; }
 blockquote { border-left: 4px solid #8ab; margin: .5em 0; padding: .2em .8em; background: #f6fafb; }
 pre { background: #f6f6f6; padding: .5em; overflow-x: auto; font-size: 0.85em; }
 figure { margin: 1em 0; width: 100%; }
 figure img { display: block; width: 100%; height: auto; border: 1px solid #eee; }
 figcaption { color: #555; font-size: .9em; }
 .note { background: #fff8e5; border: 1px solid #f0d78c; padding: .5em .8em; }
 .source { color: #444; }
</style>
</head>
<body>
<h1>attnlab reproduction report</h1>
<p>This report checks, by measurement, claims from two papers and one follow-up:</p>
<ul id="papers">
{% for p in papers %}<li><b>{{ p.label }}</b>: {{ p.authors }} ({{ p.year }}). <a href="{{ p.url }}">{{ p.title }}</a>. {{ p.venue }}.{% if p.note %} <span class="source">{{ p.note }}</span>{% endif %}</li>
{% endfor %}
</ul>
<p><b>{{ n_reproduced }} of {{ results|length }} claims reproduced</b> ({{ mode }} run{% if counts %}; {{ counts }}{% endif %}).</p>
{% if pending %}<p class="note" id="partial"><b>Partial report:</b> {{ results|length }} claims done, {{ pending|length }} still to run ({{ pending|join(', ') }}). Re-run the same command to resume: finished claims are read from the cache.</p>{% endif %}
{% if quick %}<p class="note" id="quick-note"><b>Quick mode:</b> every claim is checked at small sizes. These are smoke checks: they show that each method runs and that the small cases agree with the statement, not that the statement holds at the sizes of the default run (<code>attnlab reproduce</code> without <code>--quick</code>).</p>{% endif %}
<h2 id="reading">How to read this report</h2>
<p>The table below lists every claim with its verdict. <i>Reproduced</i>: every case measured meets the statement's bound. <i>Partly reproduced</i>: some parts hold and others do not. <i>Not reproduced</i>: a measured case misses the bound. <i>Not checked</i>: the run only exercised the code (a smoke check). <i>Error</i>: the check itself failed; its traceback is shown. Each claim then has its own section: where it comes from in the paper, the statement as we check it, what was measured, the measured cases as a table, figures, and (folded) the exact configuration and seeds. Timings and cache use are in <a href="#run-details">Run details</a> at the end.</p>
<table id="summary">
<tr><th class="l">claim</th><th class="l">source</th><th class="l">verdict</th><th class="l">measured</th></tr>
{% for r in results %}
<tr><td class="l"><a href="#{{ r.key }}">{{ r.title }}</a></td><td class="l">{{ r.source_short }}</td>
<td class="l {{ r.status|replace(' ', '-') }}">{{ r.status }}</td><td class="l">{{ r.measured_short }}</td></tr>
{% endfor %}
{% for key in pending %}<tr><td class="l">{{ key }}</td><td class="l"></td><td class="l pending">pending</td><td class="l"></td></tr>
{% endfor %}
</table>
{% for part in parts %}
<h2 id="part-{{ part.key }}">{{ part.name }}</h2>
{% for r in part.results %}
<section class="claim" id="{{ r.key }}">
<h3>{{ r.title }} <span class="{{ r.status|replace(' ', '-') }}">[{{ r.status }}]</span></h3>
<p class="source"><b>Source:</b> {{ r.source_long }}, <a href="{{ r.paper_url }}">{{ r.paper_title }}</a>.</p>
<p><b>The statement checked:</b></p><blockquote>{{ r.paper }}</blockquote>
<p><b>Measured:</b> {% if r.error %}<span class="error">{{ r.error }}</span>{% else %}{{ r.measured }}{% endif %}</p>
{% if r.error %}<pre>{{ r.measured }}</pre>{% endif %}
{% if r.table %}
<table>
<tr>{% for col in r.columns %}<th>{{ col.label }}</th>{% endfor %}</tr>
{% for row in r.table %}<tr>{% for col in r.columns %}<td>{{ row.get(col.key, '')|fmt }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endif %}
{% for fig in r.figures %}
<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.name }}"><figcaption>Figure: {{ fig.name }}</figcaption></figure>
{% endfor %}
<details><summary>configuration and seeds</summary><pre>{{ r.config_json }}</pre></details>
</section>
{% endfor %}
{% endfor %}
<h2 id="run-details">Run details</h2>
<p>Generated {{ generated }} by <code>{{ command }}</code> with attnlab {{ version }} (code {{ code }}), Python {{ python }}, torch {{ torch }}. A claim read from the cache was measured by an earlier run of the same code, settings and inputs.</p>
<table id="bookkeeping">
<tr><th class="l">claim</th><th>seconds</th><th class="l">finished (UTC)</th><th class="l">this run</th></tr>
{% for r in results %}<tr><td class="l">{{ r.key }}</td><td>{{ '%.1f'|format(r.seconds) }}</td><td class="l">{{ r.finished_at or '' }}</td><td class="l">{{ 'read from cache' if r.cached else 'measured' }}</td></tr>
{% endfor %}
</table>
</body>
</html>
"""


_ENV.filters["fmt"] = number
TEMPLATE = _ENV.from_string(TEMPLATE_SOURCE)

SUMMARY_WIDTH = 160  # characters of a claim's finding in the summary table


def _columns(rows: list[dict]) -> list[dict[str, str]]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return [{"key": c, "label": human_header(c)} for c in cols]


def _counts(results: list[ClaimResult]) -> str:
    order = ["partly reproduced", "not reproduced", "not checked", "error"]
    tally = {s: sum(r.status == s for r in results) for s in order}
    return ", ".join(f"{n} {s}" for s, n in tally.items() if n)


def _view(r: ClaimResult, out_dir: Path) -> dict:
    figures = []
    for name in r.figures:
        data = base64.b64encode((out_dir / "figures" / name).read_bytes()).decode("ascii")
        figures.append({"name": name, "data": data})
    paper, where = source_of(r.key, r.part)
    return {
        "key": r.key,
        "title": r.title,
        "part": r.part,
        "status": r.status,
        "paper": r.paper,
        "paper_title": paper.title,
        "paper_url": paper.url,
        "source_short": f"{paper.short}, {where}" if where else paper.short,
        "source_long": f"{paper.authors} ({paper.year}), {where}" if where else paper.authors,
        "measured": r.measured,
        "error": r.error,
        "seconds": r.seconds,
        "finished_at": r.finished_at,
        "cached": r.cached,
        "measured_short": shorten(r.error or r.measured, SUMMARY_WIDTH),
        "table": r.table,
        "columns": _columns(r.table),
        "figures": figures,
        "config_json": json.dumps(r.config, indent=2, sort_keys=True, default=str),
    }


def write_report(
    results: list[ClaimResult],
    out_dir: Path,
    quick: bool,
    command: str,
    pending: list[str] | tuple[str, ...] = (),
) -> Path:
    """Write report.html (self-contained) and report.json into out_dir; return the HTML path.

    `pending`: claims still to run (a partial report says so). Both files are replaced
    atomically, so a reader (or a kill) never sees half a report."""
    import torch

    from attnlab._version import __version__
    from attnlab.report.cache import code_version

    out_dir.mkdir(parents=True, exist_ok=True)
    views = [_view(r, out_dir) for r in results]
    parts = [
        {"key": key, "name": name, "results": [v for v in views if v["part"] == key]}
        for key, name in PART_NAMES.items()
    ]
    parts = [p for p in parts if p["results"]]
    others = [v for v in views if v["part"] not in PART_NAMES]
    if others:
        parts.append({"key": "other", "name": "Other claims", "results": others})
    html = TEMPLATE.render(
        results=views,
        parts=parts,
        pending=list(pending),
        papers=[
            {**vars(p), "label": "Part A" if k == "A" else "Part B" if k == "B" else "Follow-up"}
            for k, p in PAPERS.items()
        ],
        quick=quick,
        mode="quick" if quick else "default",
        counts=_counts(results),
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        code=code_version(),
        python=platform.python_version(),
        torch=torch.__version__,
        n_reproduced=sum(r.reproduced is True and r.error is None for r in results),
        command=command,
    )
    path = out_dir / "report.html"
    _write_atomic(path, html)
    _write_atomic(
        out_dir / "report.json",
        json.dumps(
            {
                "quick": quick,
                "command": command,
                "code_version": code_version(),
                "complete": not pending,
                "pending": list(pending),
                "papers": {k: vars(p) for k, p in PAPERS.items()},
                "claims": [r.to_dict() for r in results],
            },
            indent=2,
            default=str,
        ),
    )
    return path


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
