"""Write checked claims as one self-contained HTML file (figures embedded) plus a JSON twin."""

from __future__ import annotations

import base64
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import jinja2

from attnlab.report.claims import ClaimResult

_ENV = jinja2.Environment(autoescape=True)

TEMPLATE_SOURCE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>attnlab reproduction report</title>
<style>
 body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
 table { border-collapse: collapse; margin: .6em 0; font-size: 0.92em; }
 th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
 th { background: #f3f3f3; }
 td.l, th.l { text-align: left; }
 .reproduced { color: #1a7f37; font-weight: bold; }
 .not-reproduced, .error { color: #b42318; font-weight: bold; }
 .not-checked { color: #777; font-weight: bold; }
 section.claim { border-top: 2px solid #ddd; margin-top: 1.5em; padding-top: .5em; }
 blockquote { border-left: 4px solid #8ab; margin: .5em 0; padding: .2em .8em; background: #f6fafb; }
 pre { background: #f6f6f6; padding: .5em; overflow-x: auto; font-size: 0.85em; }
 img { max-width: 100%; border: 1px solid #eee; }
</style>
</head>
<body>
<h1>attnlab reproduction report</h1>
<p>{{ mode }} run, generated {{ generated }} with attnlab {{ version }} (Python {{ python }}, torch {{ torch }}).
{{ n_reproduced }} of {{ results|length }} claims reproduced. Re-run with <code>{{ command }}</code>.</p>
<table id="summary">
<tr><th class="l">claim</th><th class="l">part</th><th class="l">status</th><th class="l">measured</th><th>seconds</th></tr>
{% for r in results %}
<tr><td class="l"><a href="#{{ r.key }}">{{ r.title }}</a></td><td class="l">{{ r.part }}</td>
<td class="l {{ r.status|replace(' ', '-') }}">{{ r.status }}</td><td class="l">{{ r.measured_short }}</td><td>{{ '%.1f'|format(r.seconds) }}</td></tr>
{% endfor %}
</table>
{% for r in results %}
<section class="claim" id="{{ r.key }}">
<h2>{{ r.title }} <span class="{{ r.status|replace(' ', '-') }}">[{{ r.status }}]</span></h2>
<p><b>The paper:</b></p><blockquote>{{ r.paper }}</blockquote>
<p><b>Measured:</b> {% if r.error %}<span class="error">{{ r.error }}</span>{% else %}{{ r.measured }}{% endif %}</p>
{% if r.error %}<pre>{{ r.measured }}</pre>{% endif %}
{% if r.table %}
<table>
<tr>{% for col in r.columns %}<th>{{ col }}</th>{% endfor %}</tr>
{% for row in r.table %}<tr>{% for col in r.columns %}<td>{{ row.get(col, '')|fmt }}</td>{% endfor %}</tr>{% endfor %}
</table>
{% endif %}
{% for fig in r.figures %}
<figure><img src="data:image/png;base64,{{ fig.data }}" alt="{{ fig.name }}"><figcaption>{{ fig.name }}</figcaption></figure>
{% endfor %}
<details><summary>config and seeds</summary><pre>{{ r.config_json }}</pre></details>
</section>
{% endfor %}
</body>
</html>
"""


def _fmt(value) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        return (
            f"{value:.3e}"
            if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5)
            else f"{value:.4g}"
        )
    return str(value)


_ENV.filters["fmt"] = _fmt
TEMPLATE = _ENV.from_string(TEMPLATE_SOURCE)


def _columns(rows: list[dict]) -> list[str]:
    cols: list[str] = []
    for row in rows:
        cols.extend(k for k in row if k not in cols)
    return cols


def write_report(results: list[ClaimResult], out_dir: Path, quick: bool, command: str) -> Path:
    """Write report.html (self-contained) and report.json into out_dir; return the HTML path."""
    import torch

    from attnlab._version import __version__

    out_dir.mkdir(parents=True, exist_ok=True)
    views = []
    for r in results:
        figures = []
        for name in r.figures:
            data = base64.b64encode((out_dir / "figures" / name).read_bytes()).decode("ascii")
            figures.append({"name": name, "data": data})
        short = r.error or r.measured
        views.append(
            {
                "key": r.key,
                "title": r.title,
                "part": r.part,
                "status": r.status,
                "paper": r.paper,
                "measured": r.measured,
                "error": r.error,
                "seconds": r.seconds,
                "measured_short": short if len(short) <= 140 else short[:137] + "...",
                "table": r.table,
                "columns": _columns(r.table),
                "figures": figures,
                "config_json": json.dumps(r.config, indent=2, sort_keys=True, default=str),
            }
        )
    html = TEMPLATE.render(
        results=views,
        mode="quick" if quick else "default",
        generated=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
        python=platform.python_version(),
        torch=torch.__version__,
        n_reproduced=sum(r.reproduced is True and r.error is None for r in results),
        command=command,
    )
    path = out_dir / "report.html"
    path.write_text(html, encoding="utf-8")
    (out_dir / "report.json").write_text(
        json.dumps(
            {"quick": quick, "command": command, "claims": [r.to_dict() for r in results]},
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    return path
