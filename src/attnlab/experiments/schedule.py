"""The learning-rate schedule and the plateau rule that cuts the rate and stops a run.

Both read and update the training loop's LoopState, which checkpoints save and restore whole.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attnlab.experiments.config import RunConfig


def learning_rate(config: RunConfig, step: int, plateau_scale: float = 1.0) -> float:
    """The rate for optimiser step `step` (0-based): linear warmup, then constant, cosine to 0, or
    (schedule "plateau") the base rate times `plateau_scale`, the product of the cuts so far."""
    t = config.train
    if step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    if t.schedule == "constant":
        return t.lr
    if t.schedule == "plateau":
        return t.lr * plateau_scale
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    return 0.5 * t.lr * (1 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class LoopState:
    step: int = 0
    epoch: int = 0
    position: int = 0
    best_val: float = float("inf")
    best_step: int = 0
    bad_evals: int = 0
    lr_scale: float = 1.0
    lr_bad_evals: int = 0
    lr_cuts: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0
    history: list[list[float]] = field(default_factory=list)


def update_stopping(state: LoopState, t, val_loss: float) -> None:
    """The plateau criterion: count passes without a relative improvement of min_delta; after
    lr_patience of them cut the rate (schedule "plateau"), after patience stop (from min_steps on)."""
    if val_loss < state.best_val * (1 - t.min_delta):
        state.best_val, state.best_step, state.bad_evals, state.lr_bad_evals = (
            val_loss,
            state.step,
            0,
            0,
        )
        return
    state.bad_evals += 1
    state.lr_bad_evals += 1
    # Before min_steps neither cut nor stop: a model still on its initial plateau is not converged.
    if (
        t.schedule == "plateau"
        and state.lr_bad_evals >= t.lr_patience
        and state.step >= t.min_steps
    ):
        state.lr_scale *= t.lr_decay
        state.lr_cuts += 1
        state.lr_bad_evals = 0
    state.stopped_early = state.bad_evals >= t.patience and state.step >= t.min_steps
