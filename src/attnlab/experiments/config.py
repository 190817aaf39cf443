"""Pydantic configs for one training run and for a sweep (a grid that expands into runs).

Every hyper-parameter of a run lives in `RunConfig`; the run id is a hash of its canonical JSON
(seed included), so the same config always maps to the same stored result.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from attnlab.errors import AttnlabError

ARCHITECTURES = ("attention", "third_order", "lstm", "gru", "mlp")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TaskConfig(_Strict):
    """Which task from the attnlab.tasks registry, and its parameters (e.g. N, q, d_prime)."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class ModelConfig(_Strict):
    """A trainable baseline. `width` is the attention embedding m, the RNN state size, or the MLP width."""

    arch: Literal["attention", "third_order", "lstm", "gru", "mlp"]
    width: int = Field(32, ge=1)
    heads: int = Field(1, ge=1, description="attention heads (summed, as in the paper)")
    bidirectional: bool = Field(False, description="LSTM/GRU only")
    layers: int = Field(
        1, ge=1, description="stacked recurrent layers, or hidden layers of the MLP"
    )
    embed_hidden: int = Field(
        0, ge=0, description="hidden width of the per-token input map phi (0: linear)"
    )
    readout_hidden: int = Field(
        64, ge=1, description="hidden width of the per-token output map psi"
    )


class TrainConfig(_Strict):
    """Data sizes, optimiser and stopping rule. Steps are optimiser steps (one minibatch each).

    Convergence ("plateau" schedule, the default): the learning rate is multiplied by `lr_decay`
    after `lr_patience` validation passes without a relative improvement of `min_delta`, and the
    run stops after `patience` such passes in a row (the rate is cut only when lr_patience < patience). `max_steps` is a budget only; a run it stops is recorded with
    stop_reason "budget" so the analysis can say so.
    """

    n_train: int = Field(1000, ge=1)
    n_val: int = Field(256, ge=1)
    n_test: int = Field(1024, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False)
    schedule: Literal["constant", "cosine", "plateau"] = Field(
        "plateau",
        description="constant; cosine decay to 0 over max_steps; or cut by lr_decay on a "
        "validation plateau (the rate does not depend on the step budget)",
    )
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    max_steps: int = Field(2000, ge=1)
    min_steps: int = Field(
        0,
        ge=0,
        description="no plateau stop before this step (recurrent baselines sit "
        "on a long initial plateau before they learn anything)",
    )
    eval_every: int = Field(100, ge=1, description="steps between validation passes")
    patience: int = Field(
        5, ge=1, description="validation passes without improvement before stopping"
    )
    lr_patience: int = Field(
        2, ge=1, description="plateau schedule: passes without improvement before a cut"
    )
    lr_decay: float = Field(
        0.5, gt=0, lt=1, allow_inf_nan=False, description="plateau schedule: rate factor"
    )
    min_delta: float = Field(
        0.0, ge=0, allow_inf_nan=False, description="relative improvement of val loss that counts"
    )
    checkpoint_every: int = Field(
        500, ge=1, description="steps between checkpoints (with a run dir)"
    )
    grad_clip: float | None = Field(1.0, gt=0, allow_inf_nan=False)
    dtype: Literal["float32", "float64"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: a GPU when torch sees one, else CPU"
    )
    threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads; None keeps torch's choice"
    )


# Execution settings: where and how fast a run is computed, not what it computes. They are left
# out of the run id, so a config run on a GPU is the same cell as on a CPU (the store records the
# device each result came from).
EXECUTION_FIELDS = ("device", "threads")


class RunConfig(_Strict):
    task: TaskConfig
    model: ModelConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    seed: int = Field(0, ge=0)

    def canonical_json(self) -> str:
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    @property
    def run_id(self) -> str:
        """First 16 hex digits of the SHA-256 of the canonical JSON (config and seed), without the
        execution settings (EXECUTION_FIELDS)."""
        data = self.model_dump(mode="json")
        for name in EXECUTION_FIELDS:
            data["train"].pop(name, None)
        text = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def on_device(self, device: str) -> RunConfig:
        """The same run computed on `device` ('cpu', 'cuda' or 'auto'); the run id is unchanged."""
        train = TrainConfig.model_validate({**self.train.model_dump(), "device": device})
        return self.model_copy(update={"train": train})


def _set_dotted(target: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = target
    for key in parents:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(
                f"sweep key '{dotted}': '{key}' is not a section, so it cannot hold '{leaf}'"
            )
        node = child
    node[leaf] = value


class SweepConfig(_Strict):
    """A base run plus grids of dotted-key overrides; each grid is a cartesian product, then
    every point is repeated over `seeds`. Grids let architectures have their own axes (widths,
    learning rates) without a product over irrelevant combinations."""

    name: str
    description: str = ""
    base: dict[str, Any]
    grids: list[dict[str, list[Any]]] = Field(default_factory=lambda: [{}])
    seeds: list[int] = Field(default_factory=lambda: [0])

    @field_validator("seeds")
    @classmethod
    def _some_seeds(cls, seeds: list[int]) -> list[int]:
        if not seeds:
            raise ValueError(
                "seeds is empty, so the sweep would run nothing; give at least one seed, e.g. [0, 1, 2]"
            )
        if any(s < 0 for s in seeds):
            raise ValueError(f"seeds must be >= 0, got {seeds}")
        return seeds

    @field_validator("grids")
    @classmethod
    def _non_empty_axes(cls, grids: list[dict[str, list[Any]]]) -> list[dict[str, list[Any]]]:
        for grid in grids:
            for key, values in grid.items():
                if not values:
                    raise ValueError(
                        f"grid axis '{key}' has no values; give at least one or drop it"
                    )
        return grids

    def expand(self) -> list[RunConfig]:
        """All runs of the sweep, in a stable order, without duplicates (by run id)."""
        runs: dict[str, RunConfig] = {}
        for grid in self.grids or [{}]:
            keys = list(grid)
            for point in itertools.product(*(grid[k] for k in keys)):
                for seed in self.seeds:
                    raw = copy.deepcopy(self.base)
                    for key, value in zip(keys, point):
                        _set_dotted(raw, key, value)
                    raw["seed"] = seed
                    try:
                        config = RunConfig.model_validate(raw)
                    except ValueError as exc:
                        raise ValueError(
                            f"sweep '{self.name}': grid point {dict(zip(keys, point))} "
                            f"does not give a valid run config: {exc}"
                        ) from exc
                    runs.setdefault(config.run_id, config)
        return list(runs.values())


CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigNotFoundError(AttnlabError, FileNotFoundError):
    """Neither a config file nor a built-in config has the given name."""


def builtin_configs() -> list[str]:
    """Names of the committed configs (file stems in attnlab/experiments/configs)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def _resolve(source: str | Path) -> Path:
    path = Path(source)
    if path.exists():
        return path
    builtin = CONFIG_DIR / f"{source}.json"
    if builtin.exists():
        return builtin
    raise ConfigNotFoundError(
        f"no config file '{source}' and no built-in config of that name; "
        f"built-ins: {', '.join(builtin_configs())}"
    )


def _read_json(source: str | Path) -> dict:
    path = _resolve(source)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc


def load_run_config(source: str | Path) -> RunConfig:
    """A RunConfig from a JSON file path or a built-in config name."""
    return RunConfig.model_validate(_read_json(source))


def load_sweep(source: str | Path) -> SweepConfig:
    """A SweepConfig from a JSON file path or a built-in sweep name (e.g. 'qsa-quick')."""
    return SweepConfig.model_validate(_read_json(source))
