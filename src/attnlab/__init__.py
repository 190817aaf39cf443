"""attnlab: the theory of attention, executable.

Learning attention heads from black-box queries (Shah, Hahn, Bhattamishra, Kanade 2026) and what
attention can and cannot represent (Sanford, Hsu, Telgarsky 2023).

`Oracle` and `QueryJournal` are loaded on first use (they pull in torch), so that importing a
light submodule, or running `attnlab --help`, stays fast.
"""

from attnlab._version import __version__
from attnlab.errors import (
    AttnlabError,
    BudgetExhausted,
    ExtractionError,
    JournalMismatch,
    MissingDependency,
    OracleError,
    QueryShapeError,
)

_LAZY = {"Oracle": "attnlab.oracle", "QueryJournal": "attnlab.oracle"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "AttnlabError",
    "BudgetExhausted",
    "ExtractionError",
    "JournalMismatch",
    "MissingDependency",
    "Oracle",
    "OracleError",
    "QueryJournal",
    "QueryShapeError",
    "__version__",
]
