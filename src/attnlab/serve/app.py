"""The HTTP face of a target: a FastAPI app that answers value queries as a commercial API would.

POST /v1/query   {"sequences": [[[x_11, ..., x_1d], ...], ...]}  ->  {"outputs", "queries_used", "budget_left"}
GET  /v1/info    kind, d, dtype and request limits (never the weights)
GET  /healthz    liveness, no key needed

Every error is a JSON body {"error": <code>, "detail": <what was wrong and what to do>, ...}.
Status codes: 400 unreadable JSON or bad Idempotency-Key, 401 missing or unknown key, 403 revoked
key, 402 budget spent (a quota that only the operator can raise: retrying later will not help, which
is why this is not 429), 409 the same Idempotency-Key is still being answered, 413 too large,
422 wrong shape / token width / NaN or inf / Idempotency-Key reused with another body.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnlab.errors import OracleError, QueryShapeError
from attnlab.oracle import Oracle
from attnlab.serve.defenses import OutputDefense
from attnlab.serve.model_file import TargetFile
from attnlab.serve.store import ApiKey, KeyStore, Outcome

API_KEY_HEADER = "X-API-Key"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"


@dataclass(frozen=True)
class ServeConfig:
    """How a target is served: request limits and output defenses."""

    max_batch: int = 256
    max_tokens: int = 65536
    round_digits: int | None = None
    noise_sigma: float = 0.0
    seed: int | None = None
    stale_after_s: float = 120.0
    idempotency_ttl_s: float = 24 * 3600.0

    def __post_init__(self):
        if self.max_batch < 1 or self.max_tokens < 1:
            raise ValueError(f"max_batch and max_tokens must be >= 1, got {self.max_batch} and {self.max_tokens}")
        OutputDefense(self.noise_sigma, self.round_digits)  # validates both

    def max_body_bytes(self, d: int) -> int:
        # A float64 in shortest-repr JSON takes at most 24 characters plus a separator.
        return self.max_tokens * (26 * d + 4) + 65536


class ApiError(Exception):
    """An error answered as {"error": code, "detail": message, **extra} with this status."""

    def __init__(self, status: int, code: str, detail: str, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra = status, code, detail, extra

    def response(self) -> JSONResponse:
        headers = {"Retry-After": str(self.extra["retry_after_s"])} if "retry_after_s" in self.extra else None
        return JSONResponse({"error": self.code, "detail": self.detail, **self.extra}, status_code=self.status,
                            headers=headers)


def parse_sequences(body: bytes, d: int, config: ServeConfig) -> list[np.ndarray]:
    """The request's sequences as float64 arrays (N_i, d), or an ApiError saying what to fix."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "invalid_json", f"the request body is not valid JSON ({exc}); send "
                       f'{{"sequences": [[[x_11, ..., x_1d], ...], ...]}} with Content-Type application/json') from None
    if not isinstance(payload, dict) or "sequences" not in payload:
        raise ApiError(422, "missing_sequences", 'the body must be a JSON object with a "sequences" field: '
                       'a list of sequences, each a list of tokens, each a list of d numbers')
    raw = payload["sequences"]
    if not isinstance(raw, list) or not raw:
        raise ApiError(422, "no_sequences", '"sequences" must be a non-empty list of sequences')
    if len(raw) > config.max_batch:
        raise ApiError(413, "too_many_sequences", f"{len(raw)} sequences in one request; this server answers at "
                       f"most max_batch = {config.max_batch} per request. Split the batch.",
                       max_batch=config.max_batch)
    sequences, tokens = [], 0
    for i, seq in enumerate(raw):
        try:
            arr = np.asarray(seq)
        except ValueError:
            arr = None  # ragged: tokens of different widths
        if arr is None or arr.dtype.kind not in "iuf" or arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != d:
            shape = "ragged or non-numeric" if arr is None or arr.dtype.kind not in "iuf" else f"of shape {arr.shape}"
            raise ApiError(422, "bad_shape", f"sequence {i} is {shape}; every sequence must be a non-empty list of "
                           f"tokens, each a list of exactly d = {d} numbers", sequence=i, d=d)
        tokens += arr.shape[0]
        if tokens > config.max_tokens:
            raise ApiError(413, "too_many_tokens", f"the request holds more than max_tokens = {config.max_tokens} "
                           f"tokens (counted over all sequences); send fewer or shorter sequences per request",
                           max_tokens=config.max_tokens)
        arr = arr.astype(np.float64)
        if not np.all(np.isfinite(arr)):
            raise ApiError(422, "not_finite", f"sequence {i} contains NaN or infinite entries; queries must be "
                           f"finite real numbers", sequence=i)
        sequences.append(arr)
    return sequences


def fingerprint(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest()


def create_app(target: TargetFile, store: KeyStore, config: ServeConfig = ServeConfig()) -> FastAPI:
    """A FastAPI app serving `target` to the keys in `store` under `config`."""
    defense = OutputDefense(config.noise_sigma, config.round_digits)
    # The server-side Oracle groups ragged lengths, applies the defenses and counts every answer.
    oracle = Oracle(target.module, d=target.d, noise=defense if defense.active else None, seed=config.seed)
    store.purge(config.idempotency_ttl_s)
    max_body = config.max_body_bytes(target.d)

    app = FastAPI(title="attnlab oracle", version="1",
                  description=f"Black-box value queries to a {target.kind} attention target (d = {target.d}).")
    app.state.oracle, app.state.store, app.state.config, app.state.target = oracle, store, config, target

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = " (the API is POST /v1/query, GET /v1/info, GET /healthz)" if exc.status_code in (404, 405) else ""
        return JSONResponse({"error": "http_error", "detail": f"{exc.detail}{hint}"}, status_code=exc.status_code)

    def authenticate(request: Request) -> ApiKey:
        secret = request.headers.get(API_KEY_HEADER)
        if not secret:
            raise ApiError(401, "missing_api_key", f"send your API key in the {API_KEY_HEADER} header; "
                           f"the operator creates keys with `attnlab keys add NAME --budget N`")
        key = store.authenticate(secret)
        if key is None:
            raise ApiError(401, "unknown_api_key", f"the {API_KEY_HEADER} header holds no key this server knows; "
                           f"check for a typo or a key from another server's keys database")
        if key.revoked:
            raise ApiError(403, "revoked_api_key", f"key {key.name!r} was revoked; ask the operator for a new one")
        return key

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    def info(request: Request) -> dict:
        key = authenticate(request)
        return {"kind": target.kind, "d": target.d, "dtype": target.dtype, "max_batch": config.max_batch,
                "max_tokens": config.max_tokens, "max_body_bytes": max_body, "key": key.name,
                "budget": key.budget, "budget_left": key.budget_left}

    @app.post("/v1/query", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["sequences"], "properties": {"sequences": {
            "type": "array", "items": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}}}}}}}}})
    async def query(request: Request) -> Response:
        key = await run_in_threadpool(authenticate, request)
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= 255 and idempotency_key.isprintable()):
            raise ApiError(400, "bad_idempotency_key", f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable "
                           f"characters (a UUID is usual)")
        body = await _read_body(request, max_body)
        return await run_in_threadpool(answer, key, body, idempotency_key)

    def answer(key: ApiKey, body: bytes, idempotency_key: str | None) -> Response:
        sequences = parse_sequences(body, target.d, config)
        n = len(sequences)
        held = store.reserve(key.id, n, idempotency_key, fingerprint(body), config.stale_after_s)
        if held.outcome is Outcome.REPLAY:
            return Response(held.response, media_type="application/json", headers={REPLAYED_HEADER: "true"})
        if held.outcome is Outcome.MISMATCH:
            raise ApiError(422, "idempotency_key_reused", f"{IDEMPOTENCY_HEADER} {idempotency_key!r} was used "
                           f"before with a different body; use a fresh key for every new request")
        if held.outcome is Outcome.IN_FLIGHT:
            raise ApiError(409, "request_in_flight", "a request with this Idempotency-Key is still being answered; "
                           "retry in a moment to receive its answer (it is charged once)", retry_after_s=1)
        if held.outcome is Outcome.EXHAUSTED:
            raise ApiError(402, "budget_exhausted", f"key {key.name!r} has {held.budget_left} of {held.budget} "
                           f"queries left and this request needs {n}; nothing was charged. This is a quota, not a "
                           f"rate limit: waiting will not help, ask the operator to raise it "
                           f"(`attnlab keys budget {key.name} N`)",
                           budget=held.budget, spent=held.spent, requested=n, budget_left=held.budget_left)
        # Charged (now, or by a server that died before answering): refund whatever goes wrong from here.
        try:
            outputs = oracle.query_many(sequences)
        except (OracleError, QueryShapeError) as exc:
            store.release(key.id, idempotency_key, n)
            raise ApiError(422, "unanswerable", f"the model could not answer this request ({exc}); nothing "
                           f"was charged. Scale the inputs down.") from None
        except BaseException:
            store.release(key.id, idempotency_key, n)
            raise
        content = json.dumps({"outputs": outputs.tolist(), "queries_used": n, "budget_left": held.budget_left},
                             allow_nan=False)
        store.complete(key.id, idempotency_key, content)
        return Response(content, media_type="application/json")

    return app


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    too_large = ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes, more than max_tokens "
                         f"tokens can take; split the batch into smaller requests", max_body_bytes=limit)
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)
