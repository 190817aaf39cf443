"""`attnlab extract single-head --target FILE` and `--url URL --key KEY`, end to end from the shell."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from safetensors.numpy import save_file
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.serve import load_target

from helpers import succeeded_json

ENV = {k: v for k, v in os.environ.items() if k not in ("ATTNLAB_KEYS_DB", "ATTNLAB_KEY")} | {
    "COLUMNS": "200"
}


def attnlab(*args, cwd):
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(
            app, list(args), env={"ATTNLAB_KEYS_DB": None, "ATTNLAB_KEY": None, "COLUMNS": "200"}
        )
    finally:
        os.chdir(previous)


def weights(path) -> dict:
    return {n: p.detach().double().numpy() for n, p in load_target(path).module.named_parameters()}


def test_target_file_from_make_target(tmp_path):
    succeeded_json(
        attnlab(
            "make-target",
            "t.safetensors",
            "--kind",
            "affine",
            "--d",
            "6",
            "--seed",
            "3",
            "--json",
            cwd=tmp_path,
        )
    )
    row = succeeded_json(
        attnlab(
            "extract",
            "single-head",
            "--target",
            "t.safetensors",
            "--save",
            "got.safetensors",
            "--json",
            "--no-progress",
            cwd=tmp_path,
        )
    )
    assert row["kind"] == "affine" and row["d"] == 6
    assert max(row[f"rel_error_{n}"] for n in "Wuvc") < 1e-10 and row["fidelity"] < 1e-10
    truth, got = weights(tmp_path / "t.safetensors"), weights(tmp_path / "got.safetensors")
    for name in "Wuvc":
        np.testing.assert_allclose(got[name], truth[name], rtol=1e-9, atol=1e-11)


def test_target_file_with_a_named_attention_layer(tmp_path):
    rng = np.random.default_rng(0)
    d, heads, dh = 8, 2, 4
    layer = {
        "q_proj.weight": rng.standard_normal((heads * dh, d)),
        "k_proj.weight": rng.standard_normal((dh, d)),
        "v_proj.weight": rng.standard_normal((dh, d)),
        "q_proj.bias": rng.standard_normal(heads * dh),
        "k_proj.bias": rng.standard_normal(dh),
        "v_proj.bias": rng.standard_normal(dh),
        "o_proj.weight": rng.standard_normal((d, heads * dh)),
        "readout": rng.standard_normal(d),
    }
    save_file(layer, str(tmp_path / "layer.safetensors"), metadata={"num_heads": "2"})
    row = succeeded_json(
        attnlab(
            "extract",
            "single-head",
            "--target",
            "layer.safetensors",
            "--head",
            "1",
            "--rank",
            "4",
            "--json",
            "--no-progress",
            cwd=tmp_path,
        )
    )
    assert row["kind"] == "safetensors-layer" and row["rank"] == 4
    assert max(row[f"rel_error_{n}"] for n in "Wuvc") < 1e-9, row
    bad = attnlab(
        "extract", "single-head", "--target", "layer.safetensors", "--head", "5", cwd=tmp_path
    )
    assert bad.exit_code == 2 and "head must be in 0..1" in bad.stderr


def test_source_options_are_checked(tmp_path):
    for args, words in [
        (("--target", "missing.safetensors"), "does not exist"),
        (("--target", "x", "--url", "http://127.0.0.1:1"), "exactly one source"),
        (("--url", "http://127.0.0.1:1"), "--url needs --key"),
    ]:
        result = attnlab("extract", "single-head", *args, "--no-progress", cwd=tmp_path)
        assert result.exit_code == 2 and words in result.stderr, result.output


@pytest.mark.slow
def test_make_target_serve_extract_over_http(tmp_path):
    """The loop a user runs: make-target -> keys add -> serve (a subprocess) -> extract --url."""
    pytest.importorskip("fastapi")
    succeeded_json(
        attnlab(
            "make-target",
            "t.safetensors",
            "--kind",
            "affine",
            "--d",
            "5",
            "--seed",
            "7",
            "--json",
            cwd=tmp_path,
        )
    )
    key = succeeded_json(
        attnlab("keys", "add", "alice", "--budget", "5000", "--json", cwd=tmp_path)
    )["key"]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnlab",
            "serve",
            "t.safetensors",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
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
        row = succeeded_json(
            attnlab(
                "extract",
                "single-head",
                "--url",
                match.group(0),
                "--key",
                key,
                "--affine",
                "--fidelity-samples",
                "100",
                "--save",
                "stolen.safetensors",
                "--json",
                "--no-progress",
                cwd=tmp_path,
            )
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=20)
    assert row["source"] == match.group(0) and row["d"] == 5 and row["fidelity"] < 1e-10
    truth, got = weights(tmp_path / "t.safetensors"), weights(tmp_path / "stolen.safetensors")
    for name in "Wuvc":
        np.testing.assert_allclose(got[name], truth[name], rtol=1e-9, atol=1e-11)
    listed = succeeded_json(attnlab("keys", "list", "--json", cwd=tmp_path))["keys"]
    assert listed[0]["spent"] == row["queries"] + row["fidelity_queries"]
