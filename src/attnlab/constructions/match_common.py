"""What the Match constructions share: the angle code, the readout threshold, the temperature,
near-miss adversarial inputs, and verification against the task's scorer.

Residue x in [0, M) is the angle theta = 2 pi x / M. A sum of residues is 0 mod M exactly when
the cosine of the summed angles is 1; otherwise it is at most c = cos(2 pi / M). Readouts compare
a cosine against the midpoint (1 + c) / 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from attnlab.constructions.verification import Verification, matching_task, merge_scores
from attnlab.tasks import Batch, as_generator, get_task
from attnlab.tasks.match import MatchTask


def check_modulus(M: int) -> int:
    if isinstance(M, bool) or not isinstance(M, (int, np.integer)) or M < 2:
        raise ValueError(f"M must be an integer >= 2 (residues mod M), got {M!r}")
    return int(M)


def near_miss_cosine(M: int) -> float:
    """c = cos(2 pi / M): the largest cosine of a summed angle that is not 0 mod M."""
    return math.cos(2.0 * math.pi / M)


def readout_threshold(M: int) -> float:
    return 0.5 * (1.0 + near_miss_cosine(M))


def match_temperature(M: int, candidates: int) -> float:
    """beta with candidates * e^{-beta (1 - c)} = (1 - c) / 8: the weight leaking to non-matches
    then moves the readout cosine by at most (1 - c)/4, half the margin to the threshold."""
    gap = 1.0 - near_miss_cosine(M)
    return (math.log(candidates) + math.log(8.0 / gap)) / gap


def angles(x: torch.Tensor, M: int) -> tuple[torch.Tensor, torch.Tensor]:
    theta = 2.0 * math.pi * x / M
    return torch.cos(theta), torch.sin(theta)


def near_miss_inputs(rng: np.random.Generator, n: int, N: int, M: int, order: int) -> np.ndarray:
    """(n, N) residues built to sit just off a match: position 0 holds a; for order 2 the others
    hold -a +- 1; for order 3 half hold b and the rest -a - b +- 1. Every second sequence plants
    one exact partner (offset 0) at a random position. Labels always come from the task's solver,
    since accidental matches among the others are possible."""
    x = np.empty((n, N), dtype=np.int64)
    for row in range(n):
        a, b = rng.integers(0, M, size=2)
        offsets = rng.choice(np.array([-1, 1]), size=N)
        if row % 2 == 1 and N > 1:
            offsets[rng.integers(1, N)] = 0
        if order == 2:
            x[row] = (-a + offsets) % M
        else:
            x[row] = (-a - b + offsets) % M
            half = rng.random(N) < 0.5
            x[row, half] = b
        x[row, 0] = a
    return x


def verify_match(
    task: MatchTask, predict, rng, n: int, order: int, n_adversarial: int | None = None
) -> Verification:
    """Score `predict` (inputs -> (n, N) bits) on n sampled sequences and n near-miss sequences."""
    rng = as_generator(rng)
    batch = task.sample(rng, n)
    random_score = task.score(batch, predict(batch.inputs))
    n_adversarial = n if n_adversarial is None else n_adversarial
    inputs = {"x": near_miss_inputs(rng, n_adversarial, task.N, task.M, order)}
    extra = getattr(task, "_extra_inputs", None)
    if extra is not None:
        inputs.update(extra(rng, n_adversarial))
    adversarial = Batch(inputs, task.solve(inputs))
    adversarial_score = task.score(adversarial, predict(adversarial.inputs))
    return Verification(
        task=task.name,
        params=task.params,
        threshold=task.threshold,
        random=random_score,
        adversarial=merge_scores([adversarial_score], [n_adversarial]),
        n_random=n,
        n_adversarial=n_adversarial,
        notes={
            "positive_rate_random": float(batch.targets.mean()),
            "positive_rate_adversarial": float(adversarial.targets.mean()),
        },
    )


@dataclass
class AngleMatchConstruction:
    """What the one-head angle constructions for Match2 and Match3 share: parameters, the
    temperature over the N^(order-1) candidate partners, verification and JSON. Subclasses set
    the class constants and implement `predict(inputs) -> (n, N) int8 bits`."""

    task_name: ClassVar[str] = ""
    order: ClassVar[int] = 2
    width: ClassVar[int] = 2
    residual_inputs: ClassVar[int] = 1
    attention: ClassVar[str] = "standard"

    N: int
    M: int
    precision: int | None = None
    beta: float = 0.0
    search: dict[int, float] = field(default_factory=dict)

    @classmethod
    def build(cls, N: int, M: int, precision: int | None = None, beta: float | None = None):
        get_task(cls.task_name, N=N, M=check_modulus(M))
        beta = match_temperature(M, N ** (cls.order - 1)) if beta is None else float(beta)
        return cls(int(N), int(M), precision, beta)

    @property
    def m(self) -> int:
        return self.width

    @property
    def heads(self) -> int:
        return 1

    def predict(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def task(self) -> MatchTask:
        return get_task(self.task_name, N=self.N, M=self.M)

    def verify(self, task: MatchTask | None = None, rng=0, n: int = 16) -> Verification:
        """No wrong bit allowed on n sampled and n near-miss sequences (task.score)."""
        return verify_match(
            matching_task(task, self.task()), self.predict, rng, n, order=self.order
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task_name,
            "attention": self.attention,
            "N": self.N,
            "M": self.M,
            "m": self.m,
            "heads": self.heads,
            "p": self.precision,
            "beta": self.beta,
            "residual": self.residual_inputs > 0,
            "residual_inputs": self.residual_inputs,
            "m_including_residual": self.m + self.residual_inputs,
            "search": {str(k): v for k, v in sorted(self.search.items())},
        }
