"""Black-box access to a target: the Oracle, its journal and (in noise.py) noise models."""

from attnlab.oracle.journal import QueryJournal
from attnlab.oracle.oracle import NoiseModel, Oracle, torch_target

__all__ = ["NoiseModel", "Oracle", "QueryJournal", "torch_target"]
