"""Black-box access to a target: the Oracle, its journal and noise models."""

from attnlab.errors import JournalMismatch
from attnlab.oracle.journal import QueryJournal
from attnlab.oracle.noise import (
    AdversarialNoise,
    BoundedNoise,
    GaussianNoise,
    RoundDigits,
    RoundFloat16,
    RoundFloat32,
    make_noise,
)
from attnlab.oracle.oracle import NoiseModel, Oracle, torch_target
from attnlab.oracle.pad import QueryPad

__all__ = [
    "AdversarialNoise",
    "BoundedNoise",
    "GaussianNoise",
    "JournalMismatch",
    "NoiseModel",
    "Oracle",
    "QueryJournal",
    "QueryPad",
    "RoundDigits",
    "RoundFloat16",
    "RoundFloat32",
    "make_noise",
    "torch_target",
]
