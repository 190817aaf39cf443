"""A real `attnlab reproduce` process, interrupted with SIGINT after its first claim, resumes.

The first claim (exact-single-head, well under a second) is cached when the signal arrives; the
second (the Thm-2 width claim, ~15 s in quick mode) is running. The re-run must read the first
from the cache (same entry, same finish time, file untouched) and finish the report.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from attnlab.report import cache as cache_mod

from helpers import last_json

CLAIMS = ["exact-single-head", "qsa-width-q-log-n", "qsa-lower-bound"]


def _code_version() -> str:
    cache_mod.package_source_hash.cache_clear()
    return cache_mod.code_version()


def _command(out):
    cmd = [sys.executable, "-m", "attnlab", "reproduce", "--quick", "--out", str(out)]
    for key in CLAIMS:
        cmd += ["--only", key]
    return cmd + ["--workers", "1", "--json"]


def _sigint_default():
    # a background shell starts children with SIGINT ignored, and Python keeps it ignored
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.slow
def test_sigint_after_the_first_claim_then_rerun_resumes_without_recomputing(tmp_path):
    out = tmp_path / "report"
    version = _code_version()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        _command(out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=_sigint_default,
    )
    deadline = time.monotonic() + 120
    first = None
    while first is None and time.monotonic() < deadline and proc.poll() is None:
        found = list((out / ".cache").glob("exact-single-head-*/result.json"))
        first = found[0] if found else None
        time.sleep(0.05)
    assert first is not None, "the first claim was never cached"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted: 1 of 3 claims done and cached" in stderr, stderr
    assert "Run the same command again to resume" in stderr
    partial = json.loads((out / "report.json").read_text())
    assert not partial["complete"] and partial["pending"] == CLAIMS[1:]
    assert [c["key"] for c in partial["claims"]] == CLAIMS[:1]
    entries = sorted(
        p.parent.name.rsplit("-", 1)[0] for p in (out / ".cache").glob("*/result.json")
    )
    assert entries == ["exact-single-head"], entries  # the interrupted claim left no entry
    cached_before = json.loads(first.read_text())
    mtime_before = first.stat().st_mtime_ns

    rerun = subprocess.run(
        _command(out), capture_output=True, text=True, env=env, timeout=300, check=False
    )
    if _code_version() != version:
        pytest.skip("the package source changed during the test (a shared working tree)")
    assert rerun.returncode == 0, rerun.stderr
    summary = last_json(rerun.stdout)
    assert summary["cached"] == ["exact-single-head"]
    assert summary["status"] == {key: "reproduced" for key in CLAIMS}
    assert first.stat().st_mtime_ns == mtime_before  # the entry was read, not rewritten
    final = json.loads((out / "report.json").read_text())
    assert final["complete"] and final["pending"] == []
    assert [c["key"] for c in final["claims"]] == CLAIMS
    by_key = {c["key"]: c for c in final["claims"]}
    assert by_key["exact-single-head"]["cached"] is True
    assert by_key["exact-single-head"]["finished_at"] == cached_before["finished_at"]
    assert not by_key["qsa-width-q-log-n"]["cached"]
    html = (out / "report.html").read_text()
    assert "Partial report" not in html and "3 of 3 claims reproduced" in html
