"""The client side of `attnlab serve`: a numpy target that asks the service over HTTP.

`Oracle.http(url, key)` wraps an `HttpTarget`, so every extractor runs unchanged against a served
model. Transient failures (connection errors, timeouts, 5xx, 409 in-flight) are retried with
exponential backoff. Retrying a POST is safe because every request carries a fresh Idempotency-Key:
a server that already answered it replays the recorded answer instead of charging again.
"""

from __future__ import annotations

import json
import time
import uuid
import weakref

import httpx
import numpy as np

from attnlab.errors import BudgetExhausted, OracleError, QueryShapeError
from attnlab.serve.app import API_KEY_HEADER, IDEMPOTENCY_HEADER, REPLAYED_HEADER

RETRY_STATUSES = frozenset({409, 500, 502, 503, 504})


class ServiceBudgetExhausted(BudgetExhausted):
    """The service's per-key budget cannot pay for the next request (HTTP 402 or 429)."""

    def __init__(self, spent: int, budget: int, requested: int, detail: str):
        self.spent, self.budget, self.requested = spent, budget, requested
        OracleError.__init__(self, f"the service refused the request for lack of budget: {detail}")


class HttpTarget:
    """Maps a batch (B, N, d) to its answers (B,) by POSTing it to an `attnlab serve` endpoint.

    Batches larger than the server's limits (read from GET /v1/info) are split into several
    requests. Counters: `requests` (successful POSTs), `charged` (queries the server charged),
    `retried` (attempts repeated after a transient failure), `replayed` (answers the server
    replayed from its idempotency record), `budget_left` (as of the last answer).
    """

    def __init__(self, url: str, key: str, *, timeout: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.05, max_backoff_s: float = 5.0,
                 transport: httpx.BaseTransport | None = None, seed: int | None = None):
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.url = url.rstrip("/")
        self.retries_allowed, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._client = httpx.Client(base_url=self.url, headers={API_KEY_HEADER: key}, timeout=timeout,
                                    transport=transport)
        self._closer = weakref.finalize(self, self._client.close)
        self._jitter = np.random.default_rng(seed)
        self._info: dict | None = None
        self.requests = self.charged = self.retried = self.replayed = 0
        self.budget_left: int | None = None

    # -- service metadata -------------------------------------------------------------------
    def info(self, refresh: bool = False) -> dict:
        """GET /v1/info: kind, d, dtype, limits and this key's budget."""
        if self._info is None or refresh:
            self._info = self._send("GET", "/v1/info").json()
            self.budget_left = self._info.get("budget_left")
        return self._info

    @property
    def d(self) -> int:
        return int(self.info()["d"])

    # -- queries --------------------------------------------------------------------------------
    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3:
            raise QueryShapeError(f"an HTTP target takes a batch of shape (B, N, d); got shape {X.shape}")
        info = self.info()
        n_tokens = X.shape[1]
        if n_tokens > info["max_tokens"]:
            raise QueryShapeError(f"a sequence of {n_tokens} tokens exceeds the service's max_tokens = "
                                  f"{info['max_tokens']} per request; send shorter sequences")
        step = max(1, min(info["max_batch"], info["max_tokens"] // n_tokens))
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], step):
            out[start:start + step] = self._query(X[start:start + step])
        return out

    def _query(self, batch: np.ndarray) -> np.ndarray:
        # Serialised once: a retry must send the very same bytes, which the server fingerprints.
        body = json.dumps({"sequences": batch.tolist()}, allow_nan=False).encode()
        response = self._send("POST", "/v1/query", body)
        payload = response.json()
        outputs = np.asarray(payload.get("outputs", []), dtype=np.float64)
        if outputs.shape != (batch.shape[0],):
            raise OracleError(f"the service answered {outputs.shape} outputs for {batch.shape[0]} sequences; "
                              f"it is not an attnlab serve endpoint, or a proxy altered the response")
        self.requests += 1
        self.charged += int(payload.get("queries_used", batch.shape[0]))
        self.budget_left = payload.get("budget_left")
        if response.headers.get(REPLAYED_HEADER) == "true":
            self.replayed += 1
        return outputs

    def _send(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        headers = {}
        if body is not None:
            # Random on purpose, not seeded: two clients must never share an idempotency key.
            headers = {IDEMPOTENCY_HEADER: str(uuid.uuid4()), "Content-Type": "application/json"}
        last = ""
        for attempt in range(self.retries_allowed + 1):
            retry_after = None
            try:
                response = self._client.request(method, path, content=body, headers=headers)
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise _error_from(response)
                last = f"HTTP {response.status_code}: {_detail(response)}"
                retry_after = _seconds(response.headers.get("Retry-After"))
            if attempt == self.retries_allowed:
                break
            self.retried += 1
            delay = self.backoff_s * 2 ** attempt * (0.5 + self._jitter.random())
            time.sleep(min(self.max_backoff_s, max(delay, retry_after or 0.0)))
        raise OracleError(f"{method} {self.url}{path} failed {self.retries_allowed + 1} times, last with {last}. "
                          f"Check that `attnlab serve` is running at {self.url} (GET /healthz), or raise retries=.")

    def close(self) -> None:
        self._closer()


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_from(response: httpx.Response) -> Exception:
    """The attnlab exception for a non-retryable error answer, carrying the server's message."""
    status, detail = response.status_code, _detail(response)
    try:
        body = response.json()
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    if status in (402, 429):
        return ServiceBudgetExhausted(int(body.get("spent", -1)), int(body.get("budget", -1)),
                                      int(body.get("requested", -1)), detail)
    if status in (400, 413, 422) and body.get("error") != "unanswerable":
        return QueryShapeError(f"the service rejected the query (HTTP {status}): {detail}")
    return OracleError(f"the service answered HTTP {status}: {detail}")
