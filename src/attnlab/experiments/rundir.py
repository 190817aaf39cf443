"""A run directory's files: its config.json, checkpoint pairs and atomic writes.

A checkpoint is ckpt-<step>.safetensors (weights, best weights, optimiser moments, epoch order)
plus ckpt-<step>.json (the LoopState and the order RNG), written last, so a checkpoint counts
only once its JSON exists.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from attnlab.experiments.config import RunConfig
from attnlab.experiments.schedule import LoopState


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_run_dir(run_dir: Path, config: RunConfig) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_file = run_dir / "config.json"
    if config_file.exists():
        stored = RunConfig.model_validate_json(config_file.read_text())
        if stored.run_id != config.run_id:
            raise ValueError(
                f"{run_dir} holds run {stored.run_id}, not {config.run_id}; give each "
                f"config its own run directory (e.g. <runs>/<run_id>)"
            )
    else:
        atomic_write(config_file, config.canonical_json())


class Checkpoints:
    """ckpt-<step>.safetensors + ckpt-<step>.json pairs in a run directory."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir

    def latest_step(self) -> int | None:
        steps = sorted(int(p.stem.split("-")[1]) for p in self.run_dir.glob("ckpt-*.json"))
        return steps[-1] if steps else None

    def save(self, model, best_weights, optimizer, order, generator, state: LoopState) -> None:
        tensors = {
            f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()
        }
        tensors.update({f"best.{k}": v.clone().contiguous() for k, v in best_weights.items()})
        for index, slots in optimizer.state_dict()["state"].items():
            for name, value in slots.items():
                tensors[f"optim.{index}.{name}"] = (
                    torch.as_tensor(value).detach().clone().contiguous()
                )
        tensors["order"] = order.clone()
        stem = self.run_dir / f"ckpt-{state.step:09d}"
        tmp = stem.with_suffix(".safetensors.tmp")
        save_file({k: v.cpu() for k, v in tensors.items()}, str(tmp))
        os.replace(tmp, stem.with_suffix(".safetensors"))
        meta = dataclasses.asdict(state)
        meta["order_rng"] = base64.b64encode(generator.get_state().numpy().tobytes()).decode()
        atomic_write(stem.with_suffix(".json"), json.dumps(meta))
        for old in self.run_dir.glob("ckpt-*.json"):
            if old.stem != stem.name:
                old.unlink(missing_ok=True)
                old.with_suffix(".safetensors").unlink(missing_ok=True)

    def load(
        self, step: int, model, optimizer, generator, device
    ) -> tuple[dict, torch.Tensor, LoopState]:
        stem = self.run_dir / f"ckpt-{step:09d}"
        meta = json.loads(stem.with_suffix(".json").read_text())
        tensors = load_file(str(stem.with_suffix(".safetensors")), device=str(device))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
        optim_state = optimizer.state_dict()
        slots: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, index, name = key.split(".", 2)
                slots.setdefault(int(index), {})[name] = value.cpu() if name == "step" else value
        optim_state["state"] = slots
        optimizer.load_state_dict(optim_state)
        rng = np.frombuffer(base64.b64decode(meta.pop("order_rng")), dtype=np.uint8).copy()
        generator.set_state(torch.from_numpy(rng))
        return best, tensors["order"].cpu(), LoopState(**meta)
