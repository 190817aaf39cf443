"""Look inside a trained run: reload its best weights and read where its attention heads look."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from attnlab.experiments.config import RunConfig
from attnlab.experiments.models import build_model
from attnlab.experiments.train import _output_dim, sample_splits


def load_trained(config: RunConfig, run_dir: str | Path) -> torch.nn.Module:
    """The model of a finished run, with the best-validation weights from run_dir/model.safetensors."""
    weights = Path(run_dir) / "model.safetensors"
    if not weights.exists():
        raise FileNotFoundError(
            f"{weights} does not exist; train the run with run_dir={run_dir} to the end first"
        )
    task, train_batch, _, _ = sample_splits(
        config.model_copy(
            update={
                "train": config.train.model_copy(update={"n_train": 1, "n_val": 1, "n_test": 1})
            }
        )
    )
    model = build_model(
        config.model, train_batch.targets.shape[1], task.token_dim, _output_dim(train_batch.targets)
    )
    model.load_state_dict(load_file(str(weights)))
    return model.to(torch.float32).eval()


def qsa_attention_pattern(
    config: RunConfig, run_dir: str | Path, example: int = 0, seed: int = 12345
) -> dict[str, Any]:
    """Attention weights of a trained qSA attention run on one fresh input.

    Returns weights (H, N, N), pointers (N, N; 1 where j is in y_i), the input's y, and
    `mass_on_targets`: per head, the mean over positions i of the weight row i puts on y_i
    (1.0 for a head that looks only at the positions it must average).
    """
    if config.task.name != "qsa" or config.model.arch != "attention":
        raise ValueError(
            f"attention patterns are drawn for pairwise attention on qsa, not "
            f"{config.model.arch} on {config.task.name}"
        )
    from attnlab.tasks import get_task

    task = get_task(config.task.name, **config.task.params)
    batch = task.sample(np.random.default_rng(seed), example + 1).select(
        slice(example, example + 1)
    )
    model = load_trained(config, run_dir)
    tokens = torch.as_tensor(np.asarray(task.tokens(batch)), dtype=torch.float32)
    weights = model.attention_weights(tokens)[0].to(torch.float64).numpy()
    y = batch.inputs["y"][0]
    pointers = np.zeros(weights.shape[1:])
    np.put_along_axis(pointers, y, 1.0, axis=-1)
    mass = (weights * pointers).sum(axis=-1).mean(axis=-1)
    return {"weights": weights, "pointers": pointers, "y": y, "mass_on_targets": mass.tolist()}
