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

from attnlab import Oracle, OracleError
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
    made = last_json(
        attnlab(
            "make-target",
            "t.safetensors",
            "--kind",
            "affine",
            "--d",
            "3",
            "--seed",
            "4",
            "--json",
            cwd=tmp_path,
        )
    )
    assert made["kind"] == "affine" and made["d"] == 3
    key = last_json(attnlab("keys", "add", "alice", "--budget", "7", "--json", cwd=tmp_path))["key"]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnlab",
            "serve",
            "t.safetensors",
            "--port",
            "0",
            "--round-digits",
            "5",
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen, deadline = "", time.monotonic() + 60
        while not (match := re.search(r"http://127\.0\.0\.1:\d+", seen)):
            assert server.poll() is None and time.monotonic() < deadline, seen
            seen += server.stderr.readline()
        oracle = Oracle.http(match.group(0), key)
        X = np.random.default_rng(0).standard_normal((4, 2, 3))
        expected = (
            load_target(tmp_path / "t.safetensors").module(torch.as_tensor(X)).detach().numpy()
        )
        np.testing.assert_allclose(oracle(X), expected, rtol=1e-4)
    finally:
        server.send_signal(signal.SIGTERM)
        rest = server.communicate(timeout=20)[1]
    # uvicorn shuts down gracefully, then re-raises the signal it caught: killed by SIGTERM, no traceback.
    assert server.returncode == -signal.SIGTERM and "Traceback" not in rest
    listed = last_json(attnlab("keys", "list", "--json", cwd=tmp_path))["keys"]
    assert [(k["name"], k["spent"], k["budget_left"]) for k in listed] == [("alice", 4, 3)]


def test_cli_errors_are_clean_and_exit_2(tmp_path):
    for args, words in [
        (("serve", "missing.safetensors"), "does not exist"),
        (("keys", "budget", "nobody", "5"), "no key named 'nobody'"),
        (("make-target", "x.safetensors", "--kind", "mlp"), "--kind must be one of"),
    ]:
        result = attnlab(*args, cwd=tmp_path)
        assert (
            result.exit_code == 2
            and words in result.stderr
            and result.exception.__class__ is SystemExit
        )


def test_the_serve_example_steals_a_head_exactly(monkeypatch, capsys):
    pytest.importorskip("attnlab.extract.single_head")
    monkeypatch.setattr(sys, "argv", ["serve_extract_over_http.py", "--d", "3", "--fidelity", "20"])
    runpy.run_path(str(ROOT / "examples" / "serve_extract_over_http.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "extraction: 12 queries (d^2 + d = 12)" in out
    assert "budget left on the server: 0 of 32" in out
    assert "ServiceBudgetExhausted" in out
    assert float(re.search(r"relative error of W: (\S+),", out).group(1)) < 1e-9


@pytest.mark.parametrize(
    "args, words",
    [
        # NaN and integers past int64 are refused while parsing (cli/apps.py), before the command runs
        (("make-target", "t.safetensors", "--scale", "nan"), "nan is not a number"),
        (("make-target", "t.safetensors", "--scale", "inf"), "--scale must be a finite number > 0"),
        (("make-target", "t.safetensors", "--d", "8", "--rank", "100"), "--rank 100 exceeds --d 8"),
        (("make-target", "t.safetensors", "--d", "1000000"), "too large for a served target"),
        (("make-target", "."), "is a directory"),
        (
            ("keys", "add", "x", "--budget", "9223372036854775808"),
            "is too large (at most 2**63 - 1)",
        ),
        (("keys", "list", "--keys-db", "garbage.sqlite"), "is not an attnlab keys database"),
        (("serve", "t0.safetensors", "--log-level", "bogus"), "--log-level must be one of"),
        (("serve", "t0.safetensors", "--host", "0.0.0.0"), "every interface over plain HTTP"),
        (("serve", "t0.safetensors", "--host", ""), "every interface over plain HTTP"),
        (("serve", "t0.safetensors", "--host", "::"), "every interface over plain HTTP"),
        (
            ("serve", "t0.safetensors", "--host", "192.0.2.7"),
            "pass --tls-cert and --tls-key, or --insecure",
        ),
        (
            ("serve", "t0.safetensors", "--tls-cert", "c.pem"),
            "--tls-cert and --tls-key go together",
        ),
    ],
)
def test_bad_values_are_one_line_and_exit_2(tmp_path, args, words):
    (tmp_path / "garbage.sqlite").write_bytes(b"this is not sqlite" * 100)
    assert attnlab("make-target", "t0.safetensors", "--d", "3", cwd=tmp_path).exit_code == 0
    result = attnlab(*args, cwd=tmp_path)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.stderr.split()) and "Traceback" not in result.output
    assert not (tmp_path / "t.safetensors").exists()


def test_make_target_refuses_to_overwrite_without_force(tmp_path):
    first = last_json(
        attnlab("make-target", "t.safetensors", "--d", "3", "--seed", "1", "--json", cwd=tmp_path)
    )
    before = (tmp_path / "t.safetensors").read_bytes()
    again = attnlab("make-target", "t.safetensors", "--d", "3", "--seed", "2", cwd=tmp_path)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert (tmp_path / "t.safetensors").read_bytes() == before
    forced = last_json(
        attnlab(
            "make-target",
            "t.safetensors",
            "--d",
            "3",
            "--seed",
            "2",
            "--force",
            "--json",
            cwd=tmp_path,
        )
    )
    assert (
        forced["seed"] == 2 != first["seed"] and (tmp_path / "t.safetensors").read_bytes() != before
    )


def test_plain_http_off_loopback_is_allowed_only_when_asked_for():
    from attnlab.cli.serve import check_binding

    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        check_binding(host, None, None, insecure=False)
    check_binding("0.0.0.0", None, None, insecure=True)
    with pytest.raises(ValueError, match="every interface"):
        check_binding("0.0.0.0", None, None, insecure=False)


def _self_signed(tmp_path):
    import shutil

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.mark.slow
def test_serve_over_tls(tmp_path):
    import ssl

    import httpx

    cert, tls_key = _self_signed(tmp_path)
    attnlab("make-target", "t.safetensors", "--d", "3", cwd=tmp_path)
    key = last_json(attnlab("keys", "add", "alice", "--budget", "7", "--json", cwd=tmp_path))["key"]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnlab",
            "serve",
            "t.safetensors",
            "--port",
            "0",
            "--tls-cert",
            str(cert),
            "--tls-key",
            str(tls_key),
            "--log-level",
            "warning",
        ],
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen, deadline = "", time.monotonic() + 60
        while not (match := re.search(r"https://127\.0\.0\.1:\d+", seen)):
            assert server.poll() is None and time.monotonic() < deadline, seen
            seen += server.stderr.readline()
        trusted = ssl.create_default_context(cafile=str(cert))
        oracle = Oracle.http(match.group(0), key, transport=httpx.HTTPTransport(verify=trusted))
        assert oracle(np.random.default_rng(0).standard_normal((2, 2, 3))).shape == (2,)
        assert oracle.http_target.budget_left == 5
        with pytest.raises(
            OracleError, match="certificate"
        ):  # an unverified certificate is refused
            Oracle.http(match.group(0), key, retries=0)
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)


@pytest.mark.slow
def test_the_docs_quick_start_runs_as_written_against_a_real_server(tmp_path):
    """docs/serve.md's quick start: its shell lines (but --port 0), then its Python block verbatim."""
    import shlex

    pytest.importorskip("attnlab.extract.single_head")
    doc = (ROOT / "docs" / "serve.md").read_text().split("## Quick start", 1)[1]
    shell = re.search(r"```bash\n(.*?)```", doc, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", doc, re.S).group(1)
    lines = [shlex.split(line.split("#")[0]) for line in shell.strip().splitlines()]
    assert [line[:2] for line in lines] == [
        ["attnlab", "make-target"],
        ["attnlab", "keys"],
        ["attnlab", "serve"],
    ]
    assert attnlab(*lines[0][1:], cwd=tmp_path).exit_code == 0
    added = attnlab(*lines[1][1:], "--json", cwd=tmp_path)
    key = last_json(added)["key"]
    serve_args = [a if a != "8000" else "0" for a in lines[2][1:]]
    server = subprocess.Popen(
        [sys.executable, "-m", "attnlab", *serve_args, "--log-level", "warning"],
        cwd=tmp_path,
        env=ENV,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        seen, deadline = "", time.monotonic() + 60
        while not (match := re.search(r"http://127\.0\.0\.1:\d+", seen)):
            assert server.poll() is None and time.monotonic() < deadline, seen
            seen += server.stderr.readline()
        code = python.replace("http://127.0.0.1:8000", match.group(0)).replace(
            '"ak_..."', repr(key)
        )
        printed = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
            env=ENV,
        )
        assert printed.returncode == 0, printed.stderr[-3000:]
        expected = re.search(r"print\(.*#\s*(.*)$", python, re.M).group(1).split()
        assert printed.stdout.split() == expected  # the numbers the page promises
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
