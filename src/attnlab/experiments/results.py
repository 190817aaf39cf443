"""What one training run produced, as plain data: no torch here, so the results store and the
analysis can be used (and tested) without importing the training stack."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Run statuses. "partial": stopped by a step budget inside one call (resumable, never stored);
# "diverged": the loss went non-finite; "failed": the run raised.
FINISHED = "ok"
STATUSES = ("ok", "partial", "diverged", "failed")


@dataclass
class RunResult:
    """What one run produced; serialises to JSON (`to_dict`).

    `curve` holds the training curve, one entry per validation pass: step, mean training loss
    since the previous pass, validation loss and learning rate.
    """

    run_id: str
    config: dict[str, Any]
    seed: int
    status: str
    metrics: dict[str, Any]
    timings: dict[str, float]
    versions: dict[str, str] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    curve: dict[str, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunResult:
        return cls(**data)


CURVE_FIELDS = ("step", "train_loss", "val_loss", "lr")
