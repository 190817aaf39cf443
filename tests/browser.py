"""Open a report in a real headless Chromium (Debian's package, driven by Playwright) and inspect it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from attnlab.report.papers import PAPERS

# The only pages outside itself a report may link to: the papers it reproduces.
PAPER_URLS = frozenset(p.url for p in PAPERS.values())

CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = (
        os.environ.get("ATTNLAB_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (.ci/run installs Debian's chromium package)")
        pytest.skip("no Chromium on this machine: apt-get install chromium (CI installs it)")
    return path


def inspect_page(html_path: Path, screenshot: Path | None = None) -> dict:
    """Load the file in Chromium; return facts about its images, links and console errors."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            errors: list[str] = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(html_path.resolve().as_uri(), wait_until="load")
            facts = page.evaluate("""() => ({
                title: document.title,
                images: Array.from(document.images).map(img => ({
                    alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight})),
                links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
                ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
                text: document.body.innerText,
            })""")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=False)
            facts["errors"] = errors
            return facts
        finally:
            browser.close()


def assert_report_sound(facts: dict) -> None:
    """Every figure decodes and shows; every link points at an anchor in the page or at one of
    the papers (PAPER_URLS); no JS errors."""
    assert facts["images"], "the report shows no figure"
    for img in facts["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, (
            f"figure {img['alt']} did not render"
        )
    ids = set(facts["ids"])
    for href in facts["links"]:
        if href in PAPER_URLS:
            continue
        assert href.startswith("#"), f"report links outside itself, not to a paper: {href}"
        assert href[1:] in ids, f"broken link {href}"
    assert facts["errors"] == []
