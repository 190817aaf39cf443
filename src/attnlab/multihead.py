"""Moved: the canonical-form maths now lives in attnlab.models.canonical (this shim re-exports it)."""

from attnlab.models.canonical import *  # noqa: F401,F403
from attnlab.models.canonical import __all__  # noqa: F401
