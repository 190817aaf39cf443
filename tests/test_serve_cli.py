"""`attnlab make-target / keys / serve` as a user runs them (serve in a subprocess), and the serve example."""

from __future__ import annotations

import os
import re
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from attnlab import Oracle
from attnlab.cli import app
from attnlab.serve import load_target

from helpers import last_json as _last_json

ROOT = Path(__file__).resolve().parents[1]
# Wide lines so that rich does not wrap the URL; the keys db defaults to the working directory.
ENV = {k: v for k, v in os.environ.items() if k != "ATTNLAB_KEYS_DB"} | {"COLUMNS": "200"}


def attnlab(*args, cwd):
    """Run a command in-process (a fresh interpreter per command would cost seconds each)."""
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(app, list(args), env={"ATTNLAB_KEYS_DB": None, "COLUMNS": "200"})
    finally:
        os.chdir(previous)


def last_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return _last_json(result.stdout)


@pytest.mark.slow
def test_make_target_keys_and_serve_from_the_command_line(tmp_path):
    made = last_json(attnlab("make-target", "t.safetensors", "--kind", "affine", "--d", "3", "--seed", "4",
                             "--json", cwd=tmp_path))
    assert made["kind"] == "affine" and made["d"] == 3
    key = last_json(attnlab("keys", "add", "alice", "--budget", "7", "--json", cwd=tmp_path))["key"]
    server = subprocess.Popen([sys.executable, "-m", "attnlab", "serve", "t.safetensors", "--port", "0",
                               "--round-digits", "5", "--log-level", "warning"],
                              cwd=tmp_path, env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        seen, deadline = "", time.monotonic() + 60
        while not (match := re.search(r"http://127\.0\.0\.1:\d+", seen)):
            assert server.poll() is None and time.monotonic() < deadline, seen
            seen += server.stderr.readline()
        oracle = Oracle.http(match.group(0), key)
        X = np.random.default_rng(0).standard_normal((4, 2, 3))
        expected = load_target(tmp_path / "t.safetensors").module(torch.as_tensor(X)).detach().numpy()
        np.testing.assert_allclose(oracle(X), expected, rtol=1e-4)
    finally:
        server.send_signal(signal.SIGTERM)
        rest = server.communicate(timeout=20)[1]
    # uvicorn shuts down gracefully, then re-raises the signal it caught: killed by SIGTERM, no traceback.
    assert server.returncode == -signal.SIGTERM and "Traceback" not in rest
    listed = last_json(attnlab("keys", "list", "--json", cwd=tmp_path))["keys"]
    assert [(k["name"], k["spent"], k["budget_left"]) for k in listed] == [("alice", 4, 3)]


def test_cli_errors_are_clean_and_exit_2(tmp_path):
    for args, words in [(("serve", "missing.safetensors"), "does not exist"),
                        (("keys", "budget", "nobody", "5"), "no key named 'nobody'"),
                        (("make-target", "x.safetensors", "--kind", "mlp"), "--kind must be one of")]:
        result = attnlab(*args, cwd=tmp_path)
        assert result.exit_code == 2 and words in result.stderr and result.exception.__class__ is SystemExit


def test_the_serve_example_steals_a_head_exactly(monkeypatch, capsys):
    pytest.importorskip("attnlab.extract.single_head")
    monkeypatch.setattr(sys, "argv", ["serve_extract_over_http.py", "--d", "3", "--fidelity", "20"])
    runpy.run_path(str(ROOT / "examples" / "serve_extract_over_http.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "extraction: 12 queries (d^2 + d = 12)" in out
    assert "budget left on the server: 0 of 32" in out
    assert "ServiceBudgetExhausted" in out
    assert float(re.search(r"relative error of W: (\S+),", out).group(1)) < 1e-9
