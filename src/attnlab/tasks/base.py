"""The task interface every synthetic task implements, and the batch it produces.

A task is a small object holding its parameters (sequence length N and the like). It samples
batches from a numpy Generator, solves inputs exactly (the ground truth), encodes them as flat
per-token vectors for generic models, and scores predictions with the paper's error notions.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from attnlab._random import Seed, as_generator

__all__ = ["Batch", "Seed", "Task", "as_generator", "as_predictions", "check_count", "inputs_of"]


def check_count(name: str, value: Any, minimum: int = 1) -> int:
    """`value` as an int >= minimum, or a ValueError that names the parameter."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


@dataclass
class Batch:
    """n examples of one task: raw `inputs` (task-specific fields, first axis n) and `targets`."""

    inputs: dict[str, np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def select(self, index) -> Batch:
        """The examples picked by `index` (an int, slice or index array), as a smaller batch."""
        index = [index] if isinstance(index, (int, np.integer)) else index
        return Batch({k: v[index] for k, v in self.inputs.items()}, self.targets[index])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays become nested lists)."""
        return {
            "inputs": {k: v.tolist() for k, v in self.inputs.items()},
            "targets": self.targets.tolist(),
        }


class Task(ABC):
    """One synthetic task. Subclasses set `name` (through the registry) and implement the rest.

    - `sample(rng, n)`: a Batch of n examples, vectorised over examples.
    - `solve(inputs)`: the exact targets of raw inputs (reference solver, ground truth).
    - `tokens(batch)`: (n, N, token_dim) float64 per-token encoding for generic models.
    - `score(batch, predictions)`: the paper's error notions, as a dict of floats.
    - `params`: the constructor arguments, JSON-serialisable; `threshold`: the error level
      that counts as solving the task.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    @property
    @abstractmethod
    def params(self) -> dict[str, Any]: ...

    @property
    @abstractmethod
    def threshold(self) -> float: ...

    @property
    @abstractmethod
    def token_dim(self) -> int: ...

    @property
    def N(self) -> int:
        return self.params["N"]

    @abstractmethod
    def sample(self, rng: Seed, n: int) -> Batch: ...

    @abstractmethod
    def solve(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def tokens(self, batch: Batch | dict[str, np.ndarray]) -> np.ndarray: ...

    @abstractmethod
    def score(self, batch: Batch, predictions) -> dict[str, float]: ...

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def inputs_of(batch: Batch | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return batch.inputs if isinstance(batch, Batch) else batch


def as_predictions(predictions, shape: tuple[int, ...], task: Task) -> np.ndarray:
    """Predictions (numpy or torch) as a float64 array of the targets' shape, or a ValueError."""
    if hasattr(predictions, "detach"):
        predictions = predictions.detach().cpu().numpy()
    predictions = np.asarray(predictions, dtype=np.float64)
    if predictions.shape != shape:
        raise ValueError(
            f"{task.name}: predictions have shape {predictions.shape} but the targets have shape "
            f"{shape}; predict one value per target entry"
        )
    if not np.all(np.isfinite(predictions)):
        raise ValueError(f"{task.name}: predictions contain NaN or inf")
    return predictions
