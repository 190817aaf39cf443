"""`attnlab --help` and `attnlab --version` load no heavy module (timing lives in benchmarks/startup.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "torch",
    "scipy",
    "fastapi",
    "uvicorn",
    "httpx",
    "dask",
    "distributed",
    "matplotlib",
    "pandas",
    "pyarrow",
    "jinja2",
    "transformers",
)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["--version"],
        ["extract", "--help"],
        ["extract", "single-head", "--help"],
        ["reproduce", "--help"],
    ],
)
def test_cli_start_up_imports_no_heavy_module(argv):
    probe = (
        f"import sys\nsys.argv = ['attnlab', *{argv!r}]\nfrom attnlab.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip().splitlines()[-1] == "LOADED []", out[-2000:]


def test_version_flag_prints_the_one_version():
    from attnlab._version import __version__

    out = subprocess.run(
        [sys.executable, "-m", "attnlab", "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == f"attnlab {__version__}"


def test_cli_help_lists_match_the_library():
    from attnlab.cli import extract_single_head as cli_single_head
    from attnlab.extract.single_head import METHODS
    from attnlab.oracle.noise import NOISE_KINDS

    assert cli_single_head.METHODS == tuple(METHODS)
    assert cli_single_head.NOISE_KINDS == tuple(NOISE_KINDS)
    from attnlab.cli import multihead as cli_multihead
    from attnlab.extract.multihead import METHODS as MULTIHEAD_METHODS

    assert cli_multihead.METHODS == tuple(MULTIHEAD_METHODS)


@pytest.mark.parametrize(
    "blocked,argv,extra",
    [
        ("fastapi", ["serve", "missing.safetensors"], "serve"),
        ("jinja2", ["reproduce", "--list"], "report"),
    ],
)
def test_a_missing_extra_is_one_line_naming_the_pip_command(tmp_path, blocked, argv, extra):
    argv = [str(tmp_path) if a == "OUT" else a for a in argv]
    probe = (
        f"import sys\nsys.modules[{blocked!r}] = None  # as if not installed\n"
        f"sys.argv = ['attnlab', *{argv!r}]\nfrom attnlab.cli import main\nmain()"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert (
        lines[-1]
        == f"error: {blocked} is not installed; install it with: pip install 'attnlab[{extra}]'"
    )
    assert "Traceback" not in result.stderr
