"""Serving a target as a black-box HTTP API with keys, budgets and defenses, and the client for it.

    attnlab make-target head.safetensors --kind single-head --d 8
    attnlab keys add alice --budget 1000          # prints the key once
    attnlab serve head.safetensors --port 8000
    >>> oracle = attnlab.Oracle.http("http://127.0.0.1:8000", key)

The FastAPI app (attnlab.serve.app) and uvicorn are imported only by whoever serves.
"""

from attnlab.serve.defenses import OutputDefense, round_significant
from attnlab.serve.model_file import (
    TARGET_KINDS,
    ModelFileError,
    TargetFile,
    load_target,
    read_metadata,
    register_kind,
    save_target,
)
from attnlab.serve.store import ApiKey, KeyStore, KeyStoreError

__all__ = [
    "TARGET_KINDS",
    "ApiKey",
    "KeyStore",
    "KeyStoreError",
    "ModelFileError",
    "OutputDefense",
    "TargetFile",
    "load_target",
    "read_metadata",
    "register_kind",
    "round_significant",
    "save_target",
]
