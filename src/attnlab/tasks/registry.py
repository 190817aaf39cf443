"""Task registry: names -> Task classes, filled by the `register_task` decorator."""

from __future__ import annotations

import inspect
from typing import Any

from attnlab.tasks.base import Task

_TASKS: dict[str, type[Task]] = {}


def register_task(name: str):
    """Class decorator: make the Task subclass available as `get_task(name, ...)`."""

    def decorate(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task({name!r}) decorates Task subclasses, got {cls!r}")
        if name in _TASKS and _TASKS[name] is not cls:
            raise ValueError(
                f"a task named {name!r} is already registered ({_TASKS[name].__name__})"
            )
        cls.name = name
        _TASKS[name] = cls
        return cls

    return decorate


def list_tasks() -> list[str]:
    """The registered task names, sorted."""
    return sorted(_TASKS)


def task_class(name: str) -> type[Task]:
    """The Task class registered under `name`."""
    try:
        return _TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(list_tasks())}") from None


def task_parameters(name: str) -> dict[str, Any]:
    """The constructor parameters of a task and their defaults (inspect.Parameter.empty if none)."""
    signature = inspect.signature(task_class(name).__init__)
    return {
        p.name: p.default
        for p in list(signature.parameters.values())[1:]
        if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD
    }


def get_task(name: str, **params: Any) -> Task:
    """Build the task `name` with its parameters, e.g. get_task("qsa", N=16, q=2, d_prime=4)."""
    cls = task_class(name)
    accepted = task_parameters(name)
    unknown = sorted(set(params) - set(accepted))
    missing = sorted(
        k for k, v in accepted.items() if v is inspect.Parameter.empty and k not in params
    )
    if unknown or missing:
        problems = []
        if unknown:
            problems.append(f"unknown parameter(s) {', '.join(unknown)}")
        if missing:
            problems.append(f"missing parameter(s) {', '.join(missing)}")
        raise ValueError(f"task {name!r}: {'; '.join(problems)}; it takes {', '.join(accepted)}")
    return cls(**params)
