"""The HTTP face of a target: a FastAPI app that answers value queries as a commercial API would.

POST /v1/query   JSON {"sequences": [[[x_11, ..., x_1d], ...], ...]} or binary float64 (B, N, d)
                 ->  {"outputs", "queries_used", "budget_left"}
GET  /v1/info    kind, d, dtype and request limits (never the weights)
GET  /healthz    liveness, no key needed

The wire format (headers, binary layout) is attnlab.oracle.http's. A query is authenticated and
its budget checked from the headers (X-API-Key, X-Attnlab-Shape) before a byte of the body is
read; the body is then read with a cap (the declared shape's size, and the server's maximum) and
a deadline. Every error is a JSON body {"error": <code>, "detail": <what was wrong and what to
do>, ...}: 400 unreadable body or header, 401 missing or unknown key, 402 budget spent (a quota
that only the operator can raise: retrying later will not help, which is why this is not 429),
403 revoked key, 408 body too slow, 409 the same Idempotency-Key is being answered right now,
413 too large, 415 unknown Content-Type, 422 wrong shape / NaN or inf / Idempotency-Key reused
with another body, 500 a server fault (still JSON).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from attnlab.errors import OracleError, QueryShapeError
from attnlab.oracle import Oracle
from attnlab.oracle.http import (
    API_KEY_HEADER,
    BINARY_MEDIA,
    IDEMPOTENCY_HEADER,
    JSON_MEDIA,
    REPLAYED_HEADER,
    SHAPE_HEADER,
    body_digest,
)
from attnlab.serve.defenses import OutputDefense
from attnlab.serve.model_file import TargetFile
from attnlab.serve.requests import (
    ApiError,
    Declared,
    body_limit,
    declared,
    parse_sequences,
    read_body,
)
from attnlab.serve.store import ApiKey, KeyStore, Outcome

logger = logging.getLogger("attnlab.serve")
# What an undeclared body may hold when the key cannot pay for a single sequence: enough for an
# empty batch, nothing worth reading.
ZERO_BUDGET_BODY_BYTES = 1024


@dataclass(frozen=True)
class ServeConfig:
    """How a target is served: request limits, output defenses and connection hygiene."""

    max_batch: int = 256
    max_tokens: int = 65536
    round_digits: int | None = None
    noise_sigma: float = 0.0
    seed: int | None = None
    stale_after_s: float = 120.0
    idempotency_ttl_s: float = 24 * 3600.0
    max_body_bytes: int = 64 * 2**20  # no request body is read beyond this
    max_json_bytes: int = 8 * 2**20  # larger batches travel as binary
    body_timeout_s: float = 30.0  # the whole body must arrive within this
    header_timeout_s: float = 10.0  # complete request headers within this of connecting
    keep_alive_s: float = 5.0  # an idle kept-alive connection is closed after this
    max_connections: int = 4096  # beyond it, the longest-waiting half-sent request is dropped
    # Fault injection for crash tests and benchmarks only: hold each charged request this long
    # before answering it, so that a kill -9 lands between charging and answering.
    pause_after_charge_s: float = 0.0

    def __post_init__(self):
        for name in (
            "max_batch",
            "max_tokens",
            "max_body_bytes",
            "max_json_bytes",
            "max_connections",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name in (
            "stale_after_s",
            "idempotency_ttl_s",
            "body_timeout_s",
            "header_timeout_s",
            "keep_alive_s",
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if not (np.isfinite(self.pause_after_charge_s) and self.pause_after_charge_s >= 0):
            raise ValueError(
                f"pause_after_charge_s must be >= 0, got {self.pause_after_charge_s!r}"
            )
        OutputDefense(self.noise_sigma, self.round_digits)  # validates both

    def token_limit(self, d: int) -> int:
        """Most tokens per request: max_tokens, and what max_body_bytes holds as binary float64."""
        return max(1, min(self.max_tokens, self.max_body_bytes // (8 * d)))


def create_app(target: TargetFile, store: KeyStore, config: ServeConfig = ServeConfig()) -> FastAPI:
    """A FastAPI app serving `target` to the keys in `store` under `config`."""
    defense = OutputDefense(config.noise_sigma, config.round_digits)
    # The server-side Oracle groups ragged lengths, applies the defenses and counts every answer.
    oracle = Oracle(
        target.module, d=target.d, noise=defense if defense.active else None, seed=config.seed
    )
    d, max_tokens = target.d, config.token_limit(target.d)
    store.register_server()
    refunded = store.refund_abandoned()
    if refunded:
        logger.warning(
            "refunded %d queries charged by a server that died before answering them", refunded
        )
    store.purge(config.idempotency_ttl_s)

    app = FastAPI(
        title="attnlab oracle",
        version="1",
        description=f"Black-box value queries to a {target.kind} attention target (d = {d}).",
    )
    app.state.oracle, app.state.store, app.state.config, app.state.target = (
        oracle,
        store,
        config,
        target,
    )
    app.state.refunded = refunded

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = (
            " (the API is POST /v1/query, GET /v1/info, GET /healthz)"
            if exc.status_code in (404, 405)
            else ""
        )
        return JSONResponse(
            {"error": "http_error", "detail": f"{exc.detail}{hint}"}, status_code=exc.status_code
        )

    @app.exception_handler(Exception)
    async def _server_fault(request: Request, exc: Exception) -> JSONResponse:
        logger.error(
            "unexpected %s while answering %s %s",
            type(exc).__name__,
            request.method,
            request.url.path,
            exc_info=exc,
        )
        return JSONResponse(
            {
                "error": "internal_error",
                "detail": f"the server failed ({type(exc).__name__}); "
                f"nothing was charged for an unanswered request. Retry, or tell the operator.",
            },
            status_code=500,
        )

    def authenticate(request: Request) -> ApiKey:
        secret = request.headers.get(API_KEY_HEADER)
        if not secret:
            raise ApiError(
                401,
                "missing_api_key",
                f"send your API key in the {API_KEY_HEADER} header; "
                f"the operator creates keys with `attnlab keys add NAME --budget N`",
                close=True,
            )
        key = store.authenticate(secret)
        if key is None:
            raise ApiError(
                401,
                "unknown_api_key",
                f"the {API_KEY_HEADER} header holds no key this server knows; "
                f"check for a typo or a key from another server's keys database",
                close=True,
            )
        if key.revoked:
            raise ApiError(
                403,
                "revoked_api_key",
                f"key {key.name!r} was revoked; ask the operator for a new one",
                close=True,
            )
        return key

    def exhausted(
        key: ApiKey, budget: int, spent: int, requested: int, close: bool = False
    ) -> ApiError:
        left = max(budget - spent, 0)
        return ApiError(
            402,
            "budget_exhausted",
            f"key {key.name!r} has {left} of {budget} queries left and "
            f"this request needs {requested}; nothing was charged. This is a quota, not a rate "
            f"limit: waiting will not help, ask the operator to raise it "
            f"(`attnlab keys budget {key.name} N`)",
            close=close,
            budget=budget,
            spent=spent,
            requested=requested,
            budget_left=left,
        )

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/info")
    def info(request: Request) -> dict:
        key = authenticate(request)
        return {
            "kind": target.kind,
            "d": d,
            "dtype": target.dtype,
            "max_batch": config.max_batch,
            "max_tokens": max_tokens,
            "max_body_bytes": config.max_body_bytes,
            "max_json_bytes": config.max_json_bytes,
            "formats": [JSON_MEDIA, BINARY_MEDIA],
            "shape_header": SHAPE_HEADER,
            "key": key.name,
            "budget": key.budget,
            "budget_left": key.budget_left,
        }

    @app.post(
        "/v1/query",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON_MEDIA: {
                        "schema": {
                            "type": "object",
                            "required": ["sequences"],
                            "properties": {
                                "sequences": {
                                    "type": "array",
                                    "items": {
                                        "type": "array",
                                        "items": {"type": "array", "items": {"type": "number"}},
                                    },
                                }
                            },
                        }
                    },
                    BINARY_MEDIA: {"schema": {"type": "string", "format": "binary"}},
                },
            }
        },
    )
    async def query(request: Request) -> Response:
        key = await run_in_threadpool(authenticate, request)
        idempotency_key = request.headers.get(IDEMPOTENCY_HEADER)
        if idempotency_key is not None and not (
            0 < len(idempotency_key) <= 255 and idempotency_key.isprintable()
        ):
            raise ApiError(
                400,
                "bad_idempotency_key",
                f"{IDEMPOTENCY_HEADER} must be 1 to 255 printable characters (a UUID is usual)",
                close=True,
            )
        decl = declared(request, d, config.max_batch, max_tokens)
        limit = body_limit(decl, d, max_tokens, config.max_body_bytes, config.max_json_bytes)
        # The budget is checked before the body is read, unless this is a retry (which may be a
        # replay of an answer already paid for).
        if not await run_in_threadpool(store.has_record, key.id, idempotency_key):
            if decl.shape is not None and decl.shape[0] > key.budget_left:
                raise exhausted(key, key.budget, key.spent, decl.shape[0], close=True)
            if decl.shape is None and key.budget_left == 0:
                if decl.length is None or decl.length > ZERO_BUDGET_BODY_BYTES:
                    raise exhausted(key, key.budget, key.spent, 1, close=True)
                limit = ZERO_BUDGET_BODY_BYTES
        body = await read_body(request, decl, limit, config.body_timeout_s)
        return await run_in_threadpool(answer, key, body, decl, idempotency_key)

    def answer(key: ApiKey, body: bytes, decl: Declared, idempotency_key: str | None) -> Response:
        sequences = parse_sequences(body, decl, d, config.max_batch, max_tokens)
        n = len(sequences)
        if n == 0:
            return _json({"outputs": [], "queries_used": 0, "budget_left": key.budget_left})
        held = store.reserve(
            key.id, n, idempotency_key, body_digest(body, decl.media), config.stale_after_s
        )
        if held.outcome is Outcome.REPLAY:
            return Response(held.response, media_type=JSON_MEDIA, headers={REPLAYED_HEADER: "true"})
        if held.outcome is Outcome.MISMATCH:
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"{IDEMPOTENCY_HEADER} {idempotency_key!r} was used "
                f"before with a different body; use a fresh key for every new request",
            )
        if held.outcome is Outcome.IN_FLIGHT:
            raise ApiError(
                409,
                "request_in_flight",
                "a request with this Idempotency-Key is still being answered; "
                "retry in a moment to receive its answer (it is charged once)",
                retry_after_s=1,
            )
        if held.outcome is Outcome.EXHAUSTED:
            raise exhausted(key, held.budget, held.spent, n)
        # Charged (now, or by a server that died before answering): refund whatever goes wrong from here.
        try:
            if config.pause_after_charge_s:
                time.sleep(config.pause_after_charge_s)
            outputs = oracle.query_many(sequences)
            content = json.dumps(
                {
                    "outputs": np.asarray(outputs, dtype=np.float64).tolist(),
                    "queries_used": n,
                    "budget_left": held.budget_left,
                },
                allow_nan=False,
            )
        except (OracleError, QueryShapeError, ValueError) as exc:
            store.release(key.id, idempotency_key, n)
            raise ApiError(
                422,
                "unanswerable",
                f"the model could not answer this request ({exc}); nothing "
                f"was charged. Scale the inputs down.",
            ) from None
        except BaseException:
            store.release(key.id, idempotency_key, n)
            raise
        # Recorded before it is sent: a response a client may have received is never refunded.
        store.complete(key.id, idempotency_key, content)
        return Response(content, media_type=JSON_MEDIA)

    return app


def _json(payload: dict) -> Response:
    return Response(json.dumps(payload, allow_nan=False), media_type=JSON_MEDIA)
