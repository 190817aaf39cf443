"""Exceptions raised by attnlab. Every message says what went wrong and what to do about it."""

from __future__ import annotations

from pathlib import Path


class AttnlabError(Exception):
    """Base class of every error attnlab raises on purpose."""


class QueryShapeError(AttnlabError, ValueError):
    """A query (or a batch of queries) does not have the shape the oracle expects."""


class OracleError(AttnlabError):
    """The target behind an oracle answered something unusable (NaN, inf, wrong shape)."""


class BudgetExhausted(OracleError):
    """Sending the next batch would exceed the oracle's query budget. Nothing was sent."""

    def __init__(self, spent: int, budget: int, requested: int):
        self.spent, self.budget, self.requested = spent, budget, requested
        super().__init__(
            f"query budget exhausted: {spent} of {budget} queries spent, and the next batch "
            f"needs {requested} more. Raise the budget (Oracle(..., budget=...)) or use an "
            f"extractor that needs fewer queries; answers already paid for are kept in the "
            f"journal if one is set."
        )


class ExtractionError(AttnlabError):
    """The extractor cannot recover the target under its assumptions (says which one failed)."""


class OracleTimeout(OracleError):
    """The target did not answer within the Oracle's per-call timeout. The queries count as paid."""


class JournalError(AttnlabError):
    """A query journal file cannot be used: unreadable, not a journal, tampered with, or locked."""


class JournalMismatch(JournalError):
    """A query journal was recorded for another target (width, identity or probe answers differ)."""


class MissingDependency(AttnlabError, ImportError):
    """An optional dependency is not installed; the message names the extra that provides it."""

    def __init__(self, module: str, extra: str, purpose: str = ""):
        self.module, self.extra = module, extra
        what = f" ({purpose})" if purpose else ""
        super().__init__(
            f"{module} is not installed{what}; install it with: pip install 'attnlab[{extra}]'"
        )


def database_file(path: str | Path, error: type[AttnlabError], what: str, example: str) -> Path:
    """`path` as the Path of a database file, its parent folders created.

    Raises `error` when `path` is a directory, naming the file as `what` ("results store") and
    suggesting `example` ("results.sqlite") inside that directory instead; SQLite would otherwise
    fail later with a message that does not say which path was wrong."""
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} {path} is a directory; pass a file path such as {path / example}")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
