"""Optional dependencies: which extra provides which module, and one clear error when missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from attnlab.errors import MissingDependency

# top-level module name -> the attnlab extra that installs it
EXTRA_OF = {
    "fastapi": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "httpx": "serve",
    "dask": "sweep",
    "distributed": "sweep",
    "matplotlib": "report",
    "jinja2": "report",
    "pyarrow": "parquet",
    "pandas": "parquet",
    "transformers": "hf",
}


def require(module: str, purpose: str = "") -> ModuleType:
    """import_module(module), or MissingDependency naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        missing = as_missing_dependency(exc, purpose)
        if missing is None:
            raise
        raise missing from None


def as_missing_dependency(exc: BaseException, purpose: str = "") -> MissingDependency | None:
    """The MissingDependency an import failure stands for, or None if it is not an extra's module."""
    if isinstance(exc, MissingDependency):
        return exc
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.split(".")[0]
    extra = EXTRA_OF.get(top)
    return None if extra is None else MissingDependency(top, extra, purpose)
