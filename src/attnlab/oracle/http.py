"""The wire format of `attnlab serve` and its client: a numpy target that asks the service over HTTP.

Only httpx and numpy are needed here; the server (attnlab.serve, FastAPI and uvicorn) imports the
wire format from this module, never the other way round.

Wire format. Every POST /v1/query declares its shape in the `X-Attnlab-Shape: B,N,d` header
(B sequences, at most N tokens each, token width d), so that the server can authenticate, check
the budget and bound the body before reading a byte of it. The body is either JSON,
`{"sequences": [[[x_11, ..., x_1d], ...], ...]}` (sequences may differ in length), or, for large
batches, raw little-endian float64 in C order of shape (B, N, d) with Content-Type
`application/x-attnlab-float64` (exactly B * N * d * 8 bytes). Answers are JSON either way.

`Oracle.http(url, key)` wraps an `HttpTarget`. Transient failures (connection errors, timeouts,
5xx, 409 in-flight) are retried with exponential backoff. Retrying a POST is safe because every
request carries an Idempotency-Key: a server that already answered it replays the recorded
answer, and one that died before answering recomputes it, charging once.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
import weakref

import httpx
import numpy as np

from attnlab.errors import BudgetExhausted, OracleError, QueryShapeError

API_KEY_HEADER = "X-API-Key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
SHAPE_HEADER = "X-Attnlab-Shape"
JSON_MEDIA = "application/json"
BINARY_MEDIA = "application/x-attnlab-float64"
# Above this many numbers a batch travels as binary: JSON text is ~3x larger and slow to parse.
JSON_MAX_NUMBERS = 4096
RETRY_STATUSES = frozenset({409, 500, 502, 503, 504})


class WireFormatError(QueryShapeError):
    """A request body or shape header that does not follow the wire format."""


class ServiceBudgetExhausted(BudgetExhausted):
    """The service's per-key budget cannot pay for the next request (HTTP 402 or 429)."""

    def __init__(self, spent: int, budget: int, requested: int, detail: str):
        self.spent, self.budget, self.requested = spent, budget, requested
        OracleError.__init__(self, f"the service refused the request for lack of budget: {detail}")


class NotAnAttnlabService(OracleError):
    """The URL answers HTTP, but not as `attnlab serve` does (HTML, foreign JSON, a proxy page)."""


# -- the wire format ------------------------------------------------------------------------------
def shape_header(shape: tuple[int, int, int]) -> str:
    return ",".join(str(int(n)) for n in shape)


def parse_shape_header(value: str) -> tuple[int, int, int]:
    """(B, N, d) from an `X-Attnlab-Shape` value such as "32,16,8"."""
    parts = value.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and len(p.strip()) <= 12 for p in parts):
        raise WireFormatError(
            f"{SHAPE_HEADER} must be three whole numbers B,N,d (sequences, tokens per "
            f"sequence, token width), e.g. '32,16,8'; got {value[:60]!r}"
        )
    b, n, d = (int(p) for p in parts)
    return b, n, d


def encode_json(batch: np.ndarray) -> bytes:
    # Shortest round-trip repr: float64 values arrive bit-exact.
    return json.dumps(
        {"sequences": np.asarray(batch, dtype=np.float64).tolist()}, allow_nan=False
    ).encode()


def encode_binary(batch: np.ndarray) -> bytes:
    return np.ascontiguousarray(batch, dtype="<f8").tobytes()


def decode_binary(body: bytes, shape: tuple[int, int, int]) -> np.ndarray:
    """The (B, N, d) float64 batch in a binary body (a view of `body`, no copy)."""
    expected = shape[0] * shape[1] * shape[2] * 8
    if len(body) != expected:
        raise WireFormatError(
            f"a binary body of shape {shape} holds exactly {expected} bytes "
            f"(B * N * d float64 values), got {len(body)}"
        )
    return np.frombuffer(body, dtype="<f8").reshape(shape)


def body_digest(body: bytes, media_type: str) -> bytes:
    return hashlib.blake2b(media_type.encode() + b"\0" + body, digest_size=16).digest()


# -- the client --------------------------------------------------------------------------------------
class HttpTarget:
    """Maps a batch (B, N, d) to its answers (B,) by POSTing it to an `attnlab serve` endpoint.

    Batches larger than the server's limits (read from GET /v1/info) are split into several
    requests. `wire` is "auto" (JSON for small batches, binary above JSON_MAX_NUMBERS numbers),
    "json" or "binary". Counters: `requests` (successful POSTs), `charged` (queries the server
    charged), `retried` (attempts repeated after a transient failure), `replayed` (answers the
    server replayed from its idempotency record), `budget_left` (as of the last answer).

    A request that failed after all retries may have been charged. Its Idempotency-Key is kept:
    sending the same batch again (also after the server restarted) reuses it and is not charged
    twice.
    """

    def __init__(
        self,
        url: str,
        key: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        wire: str = "auto",
        transport: httpx.BaseTransport | None = None,
        seed: int | None = None,
    ):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be a whole number >= 0, got {retries!r}")
        if wire not in ("auto", "json", "binary"):
            raise ValueError(f"wire must be 'auto', 'json' or 'binary', got {wire!r}")
        self.url = url.rstrip("/")
        self.wire = wire
        self.retries_allowed, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self._client = httpx.Client(
            base_url=self.url, headers={API_KEY_HEADER: key}, timeout=timeout, transport=transport
        )
        self._closer = weakref.finalize(self, self._client.close)
        self._jitter = np.random.default_rng(seed)
        self._info: dict | None = None
        self._unsettled: dict[bytes, str] = {}  # body digest -> Idempotency-Key of a failed request
        self.requests = self.charged = self.retried = self.replayed = 0
        self.budget_left: int | None = None

    # -- service metadata -------------------------------------------------------------------
    def info(self, refresh: bool = False) -> dict:
        """GET /v1/info: kind, d, dtype, limits and this key's budget."""
        if self._info is None or refresh:
            response = self._send("GET", "/v1/info")
            info = _json_of(response, self.url)
            if not isinstance(info, dict) or not all(
                _is_count(info.get(k)) for k in ("d", "max_batch", "max_tokens")
            ):
                raise NotAnAttnlabService(
                    f"{self.url}/v1/info answered JSON without d, max_batch and "
                    f"max_tokens: this is not an attnlab serve endpoint (check the URL)"
                )
            self._info = info
            self.budget_left = info.get("budget_left")
        return self._info

    @property
    def d(self) -> int:
        return int(self.info()["d"])

    # -- queries --------------------------------------------------------------------------------
    def __call__(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3:
            raise QueryShapeError(
                f"an HTTP target takes a batch of shape (B, N, d); got shape {X.shape}"
            )
        if X.shape[0] == 0:
            return np.empty(0)  # nothing to ask: no request, nothing charged
        if X.shape[1] == 0:
            raise QueryShapeError(
                f"every sequence needs at least one token; got a batch of shape {X.shape}"
            )
        info = self.info()
        n_tokens = X.shape[1]
        if n_tokens > info["max_tokens"]:
            raise QueryShapeError(
                f"a sequence of {n_tokens} tokens exceeds the service's max_tokens = "
                f"{info['max_tokens']} per request; send shorter sequences"
            )
        step = max(1, min(info["max_batch"], info["max_tokens"] // n_tokens))
        out = np.empty(X.shape[0])
        for start in range(0, X.shape[0], step):
            out[start : start + step] = self._query(X[start : start + step])
        return out

    def _encode(self, batch: np.ndarray) -> tuple[bytes, str]:
        binary = self.wire == "binary" or (self.wire == "auto" and batch.size > JSON_MAX_NUMBERS)
        return (encode_binary(batch), BINARY_MEDIA) if binary else (encode_json(batch), JSON_MEDIA)

    def _query(self, batch: np.ndarray) -> np.ndarray:
        # Encoded once: a retry must send the very same bytes, which the server fingerprints.
        body, media = self._encode(batch)
        digest = body_digest(body, media)
        # Random on purpose, not seeded: two clients must never share an idempotency key.
        idempotency_key = self._unsettled.get(digest) or str(uuid.uuid4())
        headers = {
            IDEMPOTENCY_HEADER: idempotency_key,
            "Content-Type": media,
            SHAPE_HEADER: shape_header(batch.shape),
        }
        try:
            response = self._send("POST", "/v1/query", body, headers)
        except OracleError as exc:
            if not isinstance(exc, (BudgetExhausted, QueryShapeError, NotAnAttnlabService)):
                self._unsettled[digest] = idempotency_key
            raise
        self._unsettled.pop(digest, None)
        payload = _json_of(response, self.url)
        outputs = np.asarray(
            payload.get("outputs", []) if isinstance(payload, dict) else [], dtype=np.float64
        )
        if outputs.shape != (batch.shape[0],):
            raise NotAnAttnlabService(
                f"the service answered {outputs.shape} outputs for {batch.shape[0]} "
                f"sequences; it is not an attnlab serve endpoint, or a proxy "
                f"altered the response"
            )
        self.requests += 1
        self.charged += int(payload.get("queries_used", batch.shape[0]))
        self.budget_left = payload.get("budget_left")
        if response.headers.get(REPLAYED_HEADER) == "true":
            self.replayed += 1
        return outputs

    def _send(
        self, method: str, path: str, body: bytes | None = None, headers: dict | None = None
    ) -> httpx.Response:
        last = ""
        for attempt in range(self.retries_allowed + 1):
            retry_after = None
            try:
                response = self._client.request(method, path, content=body, headers=headers)
            except httpx.TransportError as exc:
                if "CERTIFICATE_VERIFY_FAILED" in str(
                    exc
                ):  # retrying will not change the certificate
                    raise OracleError(
                        f"{self.url} presented a TLS certificate this client does not trust "
                        f"({exc}); pass transport=httpx.HTTPTransport(verify=ssl_context) with "
                        f"the server's CA"
                    ) from None
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise _error_from(response, self.url)
                last = f"HTTP {response.status_code}: {_detail(response)}"
                retry_after = _seconds(response.headers.get("Retry-After"))
            if attempt == self.retries_allowed:
                break
            self.retried += 1
            delay = self.backoff_s * 2**attempt * (0.5 + self._jitter.random())
            time.sleep(min(self.max_backoff_s, max(delay, retry_after or 0.0)))
        again = (
            (
                " The request may have been charged: sending the same batch again reuses its "
                "Idempotency-Key, so it is not charged twice."
            )
            if method == "POST"
            else ""
        )
        raise OracleError(
            f"{method} {self.url}{path} failed {self.retries_allowed + 1} times, last with "
            f"{last}. Check that `attnlab serve` is running at {self.url} (GET /healthz), "
            f"or raise retries=.{again}"
        )

    def close(self) -> None:
        self._closer()


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _json_of(response: httpx.Response, url: str):
    try:
        return response.json()
    except (ValueError, UnicodeDecodeError):
        kind = response.headers.get("content-type", "no content type")
        raise NotAnAttnlabService(
            f"{url} answered HTTP {response.status_code} with {kind} ({response.text[:80]!r}), not "
            f"attnlab's JSON: it is not an attnlab serve endpoint; check the URL and port"
        ) from None


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return response.text[:500]
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _error_from(response: httpx.Response, url: str) -> Exception:
    """The attnlab exception for a non-retryable error answer, carrying the server's message."""
    status, detail = response.status_code, _detail(response)
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or "error" not in body:
        if status == 429:
            return ServiceBudgetExhausted(-1, -1, -1, detail)
        kind = response.headers.get("content-type", "no content type")
        return NotAnAttnlabService(
            f"{url} answered HTTP {status} with {kind} ({detail[:80]!r}), not "
            f"attnlab's JSON error: check that the URL points at `attnlab serve`"
        )
    if status in (402, 429):
        return ServiceBudgetExhausted(
            _int(body.get("spent")), _int(body.get("budget")), _int(body.get("requested")), detail
        )
    if status in (400, 413, 422) and body.get("error") != "unanswerable":
        return QueryShapeError(f"the service rejected the query (HTTP {status}): {detail}")
    return OracleError(f"the service answered HTTP {status}: {detail}")


def _int(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else -1
