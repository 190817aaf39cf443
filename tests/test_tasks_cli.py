import numpy as np
from typer.testing import CliRunner

from attnlab.cli import app
from attnlab.tasks import get_task

from helpers import last_json

runner = CliRunner()


def test_tasks_list_json_names_every_task_with_parameters():
    result = runner.invoke(app, ["tasks", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in last_json(result.output)["tasks"]}
    assert set(rows) >= {"qsa", "match2", "match3", "match3-local", "match3-structured"}
    assert rows["qsa"]["parameters"] == {"N": None, "q": None, "d_prime": 4}
    assert rows["match3-local"]["parameters"]["window"] == 2


def test_tasks_sample_json_is_the_library_batch_for_the_same_seed():
    result = runner.invoke(
        app,
        [
            "tasks",
            "sample",
            "qsa",
            "--N",
            "8",
            "--q",
            "3",
            "--d-prime",
            "2",
            "--n",
            "2",
            "--seed",
            "5",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = last_json(result.output)
    batch = get_task("qsa", N=8, q=3, d_prime=2).sample(np.random.default_rng(5), 2)
    np.testing.assert_array_equal(np.array(data["examples"]["inputs"]["y"]), batch.inputs["y"])
    np.testing.assert_allclose(np.array(data["examples"]["targets"]), batch.targets, rtol=0, atol=0)
    assert data["threshold"] == 1 / 6 and data["token_dim"] == 2 + 16


def test_tasks_sample_match_tables_and_positive_rate():
    result = runner.invoke(app, ["tasks", "sample", "match3", "--N", "10", "--M", "31", "--n", "2"])
    assert result.exit_code == 0, result.output
    assert "match3 example 1" in result.output and "positive_rate" in result.output
    data = last_json(
        runner.invoke(
            app,
            [
                "tasks",
                "sample",
                "match3-local",
                "--N",
                "10",
                "--M",
                "31",
                "--window",
                "1",
                "--unbalanced",
                "--json",
            ],
        ).output
    )
    assert data["balanced"] is False and data["window"] == 1
    targets = np.array(data["examples"]["targets"])
    assert data["positive_rate"] == targets.mean()
    structured = runner.invoke(
        app, ["tasks", "sample", "match3-structured", "--N", "6", "--M", "11", "--n", "1"]
    )
    assert "partner p(i)" in structured.output


def test_tasks_sample_errors_are_clean():
    result = runner.invoke(app, ["tasks", "sample", "match2", "--N", "4", "--q", "3"])
    assert result.exit_code == 2
    assert "unknown parameter(s) q" in result.output and "Traceback" not in result.output
    assert runner.invoke(app, ["tasks", "sample", "qsb"]).exit_code == 2
    assert "q <= N" in runner.invoke(app, ["tasks", "sample", "qsa", "--N", "3", "--q", "4"]).output
