"""Small helpers shared by the test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from attnlab.experiments import SweepConfig


def last_json(output) -> Any:
    """The JSON object on the last non-empty line of a CLI's output.

    Accepts the text itself, or a typer/click Result (its stdout, so stderr spinners and
    warnings never get in the way).
    """
    text = output if isinstance(output, str) else output.stdout
    lines = text.strip().splitlines()
    if not lines:
        raise AssertionError("the command printed nothing; expected a JSON object on the last line")
    return json.loads(lines[-1])


def succeeded_json(result) -> Any:
    """`last_json` of a typer/click Result that must have exited 0 (else its output is shown)."""
    assert result.exit_code == 0, result.output
    return last_json(result)


def tiny_sweep(
    name="tiny", seeds=(0, 1), max_steps=12, grids=None, n_train=(32, 64)
) -> SweepConfig:
    """A sweep of tiny qSA runs (N = 6, a few steps) that a test can run in seconds."""
    from attnlab.experiments import SweepConfig

    base = {
        "task": {"name": "qsa", "params": {"N": 6, "q": 2, "d_prime": 3}},
        "model": {"arch": "attention", "width": 8, "readout_hidden": 8},
        "train": {
            "n_val": 32,
            "n_test": 64,
            "batch_size": 16,
            "lr": 0.003,
            "max_steps": max_steps,
            "eval_every": 4,
            "patience": 10,
            "checkpoint_every": 4,
        },
    }
    grids = grids or [{"model.arch": ["attention", "gru"], "train.n_train": list(n_train)}]
    return SweepConfig(name=name, base=base, grids=grids, seeds=list(seeds))


def force_packed_device_path(monkeypatch) -> None:
    """Make every QueryBuffer take the device path (segments packed, the torch writer) on the CPU,
    so the reader a GPU would run is tested without one."""
    import torch

    from attnlab.extract.single_head import query_buffer
    from attnlab.extract.single_head.device_probes import DeviceWriter

    original = query_buffer.QueryBuffer.__init__

    def as_device(self, oracle, chunk, d):
        original(self, oracle, chunk, d)
        self.device_writer = DeviceWriter(torch.device("cpu"))
        self.view = self.tensor
        self.host = False

    monkeypatch.setattr(query_buffer.QueryBuffer, "__init__", as_device)
