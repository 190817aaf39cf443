"""Synthetic tasks of Sanford, Hsu and Telgarsky (2023): qSA, Match2, Match3 and Match3 variants.

    from attnlab.tasks import get_task, list_tasks
    task = get_task("qsa", N=16, q=2, d_prime=4)   # or "match2"/"match3" (N, M),
    batch = task.sample(rng, n)                    # "match3-local" (N, M, window),
    task.score(batch, predictions)                 # "match3-structured" (N, M)

Every task: sample(rng, n) -> Batch(inputs, targets); solve(inputs) -> targets (exact);
tokens(batch) -> (n, N, token_dim); score(batch, predictions) -> dict; params; threshold.
Conventions (repeated indices, sampling, encodings) are stated in each task module's docstring.
"""

from attnlab.tasks.base import Batch, Task, as_generator
from attnlab.tasks.match import Match2, Match3, MatchTask
from attnlab.tasks.match3_variants import Match3Local, Match3Structured
from attnlab.tasks.qsa import QSparseAveraging, distinct_indices, uniform_ball
from attnlab.tasks.registry import get_task, list_tasks, register_task, task_class, task_parameters

__all__ = [
    "Batch",
    "Match2",
    "Match3",
    "Match3Local",
    "Match3Structured",
    "MatchTask",
    "QSparseAveraging",
    "Task",
    "as_generator",
    "distinct_indices",
    "get_task",
    "list_tasks",
    "register_task",
    "task_class",
    "task_parameters",
    "uniform_ball",
]
