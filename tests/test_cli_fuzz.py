"""CLI fuzz (issue 10): bad values give exit 2, a short message on stderr, never a traceback.

Commands are enumerated from the typer app, so a new command is covered automatically.
"""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from attnlab.cli import app

runner = CliRunner()


def _leaves(command, path: tuple[str, ...] = ()):
    if hasattr(command, "commands"):  # a group (typer vendors its own click; duck-type it)
        for name, sub in command.commands.items():
            yield from _leaves(sub, path + (name,))
    else:
        yield path, command


LEAVES = list(_leaves(typer.main.get_command(app)))


def _numeric_options():
    for path, command in LEAVES:
        for param in command.params:
            if (
                getattr(param, "param_type_name", "") == "option"
                and not param.is_flag
                and (
                    getattr(getattr(param, "type_descriptor", None), "annotation", None)
                    in (int, float)
                )
            ):
                yield path, param.opts[0]


def _check(args, *, expect_rc=2):
    result = runner.invoke(app, list(args))
    text = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert "Traceback" not in text, (args, text)
    assert result.exit_code == expect_rc, (args, result.exit_code, text, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    return result


def test_commands_are_enumerated():
    names = {" ".join(p) for p, _ in LEAVES}
    assert {"keys list", "construct qsa", "make-target"} <= names, names


@pytest.mark.parametrize("path,option", list(_numeric_options()), ids=lambda x: str(x))
def test_wrong_type_for_every_numeric_option(path, option):
    _check([*path, option, "not-a-number"])


@pytest.fixture()
def files(tmp_path):
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"this is not sqlite" * 10)
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    return tmp_path, garbage, existing


ISSUE_CASES = [
    lambda t, g, e: ["keys", "list", "--keys-db", str(g)],
    lambda t, g, e: [
        "keys",
        "add",
        "x",
        "--keys-db",
        str(t / "k.sqlite"),
        "--budget",
        "9223372036854775808",
    ],
    lambda t, g, e: ["construct", "qsa", "--q", "0"],
    lambda t, g, e: ["construct", "qsa", "--eps", "0"],
    lambda t, g, e: ["construct", "disjointness", "--q", "0"],
    lambda t, g, e: ["make-target", str(t / "t.safetensors"), "--d", "1000000"],
    lambda t, g, e: ["make-target", str(t)],
    lambda t, g, e: ["results", "export", str(t / "missing" / "dir" / "x.csv")],
    lambda t, g, e: ["extract", "single-head", "--d", "1000000"],
]


@pytest.mark.parametrize("case", range(len(ISSUE_CASES)))
def test_issue_cases_fail_cleanly(files, case):
    result = _check(ISSUE_CASES[case](*files))
    message = result.output.strip()
    assert message.startswith("error:") or "Usage" in message or "Error" in message, message
    assert len(message.splitlines()) <= 12  # one line (or click's short usage box)


def test_markup_in_messages_is_escaped(capsys):
    from attnlab.cli.output import fail

    with pytest.raises(typer.Exit):
        fail(ValueError("input should be [bold]a list[/bold] at loc=[0, 'W']"))
    err = capsys.readouterr().err
    assert "[bold]a list[/bold] at loc=[0, 'W']" in err
    assert len(err.strip().splitlines()) == 1


def test_central_handler_maps_stray_errors(monkeypatch):
    import sqlite3

    from attnlab.cli.apps import GuardedGroup

    assert isinstance(typer.main.get_command(app), GuardedGroup)
    command = typer.main.get_command(app)
    ctx = command.make_context("attnlab", ["--help"], resilient_parsing=True)
    from typer.core import TyperGroup

    parent = TyperGroup.__mro__[1]  # the click Group that GuardedGroup.invoke calls into
    monkeypatch.setattr(
        parent,
        "invoke",
        lambda self, c: (_ for _ in ()).throw(sqlite3.DatabaseError("file is not a database [x]")),
    )
    with pytest.raises(BaseException) as exit_info:
        command.invoke(ctx)
    assert getattr(exit_info.value, "exit_code", None) == 2, exit_info.value


# Commands whose valid values start long work (training, sweeps, the report, a server): only values
# refused while parsing are sent to them, so the fuzz never starts a long computation.
HEAVY = {"reproduce", "sweep", "train", "serve"}
REFUSED_WHILE_PARSING = ["9223372036854775808", "1e30", "nan"]


def _value_cases():
    for path, option in _numeric_options():
        values = list(REFUSED_WHILE_PARSING)
        if path[0] not in HEAVY and "seed" not in option:
            values += ["0", "-1"]
        for value in values:
            yield path, option, value


def _required_arguments(path, tmp_path):
    command = dict(LEAVES)[path]
    return [
        str(tmp_path / f"new-{p.name}")
        for p in command.params
        if p.param_type_name == "argument" and p.required
    ]


@pytest.mark.parametrize("path,option,value", list(_value_cases()), ids=lambda x: str(x))
def test_bad_values_never_crash(path, option, value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [*path, *_required_arguments(path, tmp_path), option, value]
    result = runner.invoke(app, args)
    assert "Traceback" not in result.output, (args, result.output)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        args,
        result.exception,
    )
    assert result.exit_code in (0, 2), (args, result.exit_code, result.output)
    if (
        value == "9223372036854775808"
        and dict(_numeric_options_with_types())[(path, option)] is int
    ):
        assert result.exit_code == 2, (args, result.output)
    if result.exit_code == 2:
        assert len(result.output.strip().splitlines()) <= 8, result.output


def _numeric_options_with_types():
    for path, command in LEAVES:
        for param in command.params:
            descriptor = getattr(param, "type_descriptor", None)
            if param.param_type_name == "option":
                yield (path, param.opts[0]), getattr(descriptor, "annotation", None)


def _attnlab(*args, timeout=60):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", "from attnlab.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.slow
def test_subprocess_cases(tmp_path):
    target = tmp_path / "head.safetensors"
    assert _attnlab("make-target", str(target), "--d", "4").returncode == 0
    existing = tmp_path / "existing_file"
    existing.write_text("x")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not sqlite at all" * 20)
    cases = [
        ["serve", str(target), "--budget", "1e30"],
        ["serve", str(target), "--log-level", "bogus", "--port", "0"],
        ["serve", str(target), "--keys-db", str(garbage), "--port", "0"],
        ["make-target", str(target)],  # exists: never overwritten silently
        ["results", "show", "--store", str(garbage)],
        ["results", "plot", "--store", str(garbage)],
        ["results", "plot", "--out", str(existing)],
        ["train", "run-qsa-attention", "--run-dir", str(existing)],
    ]
    for args in cases:
        done = _attnlab(*args)
        assert "Traceback" not in done.stderr + done.stdout, (args, done.stderr)
        assert done.returncode == 2, (args, done.returncode, done.stdout, done.stderr)
        assert 1 <= len(done.stderr.strip().splitlines()) <= 8, (args, done.stderr)
