"""Reading one query request: its declared shape, a bounded body read, and parsing (JSON or binary).

Everything here raises ApiError, which the app answers as a JSON error body; nothing is charged.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import numpy as np
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect, Request

from attnlab.oracle.http import (
    BINARY_MEDIA,
    JSON_MEDIA,
    SHAPE_HEADER,
    WireFormatError,
    decode_binary,
)
from attnlab.oracle.http import parse_shape_header as _parse_shape

# A float64 in shortest-repr JSON takes at most 24 characters plus a separator.
JSON_BYTES_PER_NUMBER = 26
JSON_OVERHEAD_BYTES = 4096


class ApiError(Exception):
    """An error answered as {"error": code, "detail": message, **extra} with this status."""

    def __init__(self, status: int, code: str, detail: str, close: bool = False, **extra):
        super().__init__(detail)
        self.status, self.code, self.detail, self.extra, self.close = (
            status,
            code,
            detail,
            extra,
            close,
        )

    def response(self) -> JSONResponse:
        headers = (
            {"Retry-After": str(self.extra["retry_after_s"])}
            if "retry_after_s" in self.extra
            else {}
        )
        if self.close:
            headers["Connection"] = "close"  # the unread body is not worth reading
        return JSONResponse(
            {"error": self.code, "detail": self.detail, **self.extra},
            status_code=self.status,
            headers=headers or None,
        )


@dataclass(frozen=True)
class Declared:
    """What the headers say about a request before its body is read."""

    media: str  # JSON_MEDIA or BINARY_MEDIA
    shape: tuple[int, int, int] | None  # (B, N, d) from X-Attnlab-Shape, if sent
    length: int | None  # Content-Length, if sent


def declared(request: Request, d: int, max_batch: int, max_tokens: int) -> Declared:
    media = (
        request.headers.get("content-type", JSON_MEDIA).split(";")[0].strip().lower() or JSON_MEDIA
    )
    if media not in (JSON_MEDIA, BINARY_MEDIA):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Content-Type {media!r} is not understood; send "
            f"{JSON_MEDIA} or {BINARY_MEDIA} (raw little-endian float64 of shape B,N,d)",
            close=True,
        )
    raw_length = request.headers.get("content-length")
    length = None
    if raw_length is not None:
        if not raw_length.isdigit() or len(raw_length) > 15:
            raise ApiError(
                400,
                "bad_content_length",
                f"Content-Length {raw_length[:20]!r} is not a byte count",
                close=True,
            )
        length = int(raw_length)
    shape = None
    if (value := request.headers.get(SHAPE_HEADER)) is not None:
        try:
            shape = _parse_shape(value)
        except WireFormatError as exc:
            raise ApiError(400, "bad_shape_header", str(exc), close=True) from None
        b, n, width = shape
        if width != d:
            raise ApiError(
                422,
                "bad_shape",
                f"{SHAPE_HEADER} declares tokens of width {width}, but this server's "
                f"target takes exactly d = {d} numbers per token",
                d=d,
                close=True,
            )
        if b > max_batch:
            raise ApiError(
                413,
                "too_many_sequences",
                f"{b} sequences in one request; this server answers at "
                f"most max_batch = {max_batch} per request. Split the batch.",
                max_batch=max_batch,
                close=True,
            )
        if b and n < 1:
            raise ApiError(
                422, "bad_shape", "every sequence needs at least one token (N >= 1)", close=True
            )
        if b * n > max_tokens:
            raise ApiError(
                413,
                "too_many_tokens",
                f"the request declares {b * n} tokens, more than max_tokens "
                f"= {max_tokens} per request; send fewer or shorter sequences",
                max_tokens=max_tokens,
                close=True,
            )
    elif media == BINARY_MEDIA:
        raise ApiError(
            400,
            "missing_shape_header",
            f"a binary body needs the {SHAPE_HEADER}: B,N,d header",
            close=True,
        )
    return Declared(media, shape, length)


def body_limit(decl: Declared, d: int, max_tokens: int, max_body: int, max_json: int) -> int:
    """The most bytes this request's body may hold, given what its headers declare."""
    tokens = max_tokens if decl.shape is None else decl.shape[0] * decl.shape[1]
    if decl.media == BINARY_MEDIA:
        return tokens * d * 8
    return min(max_body, max_json, tokens * (JSON_BYTES_PER_NUMBER * d + 4) + JSON_OVERHEAD_BYTES)


async def read_body(request: Request, decl: Declared, limit: int, timeout_s: float) -> bytes:
    """The body, read in chunks as it arrives, never more than `limit` bytes nor longer than timeout_s."""
    too_large = ApiError(
        413,
        "body_too_large",
        f"the request body exceeds {limit} bytes, the most its "
        f"declared shape and this server's limits allow; declare the shape in {SHAPE_HEADER} "
        f"(B,N,d), use {BINARY_MEDIA} for large batches, or split the batch",
        max_body_bytes=limit,
        close=True,
    )
    if decl.length is not None and decl.length > limit:
        raise too_large
    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(
            408,
            "body_timeout",
            f"the request body did not arrive within {timeout_s:g} s; send it "
            f"at once (smaller batches help on slow links)",
            close=True,
        ) from None
    except ClientDisconnect:
        raise ApiError(
            400, "client_disconnected", "the client closed the connection mid-body", close=True
        ) from None
    return b"".join(chunks)


def parse_sequences(
    body: bytes, decl: Declared, d: int, max_batch: int, max_tokens: int
) -> list[np.ndarray]:
    """The request's sequences as float64 arrays (N_i, d), or an ApiError saying what to fix."""
    if decl.media == BINARY_MEDIA:
        try:
            batch = decode_binary(body, decl.shape)
        except WireFormatError as exc:
            raise ApiError(422, "body_shape_mismatch", str(exc)) from None
        sequences = list(batch)
    else:
        sequences = _parse_json(body, d, max_batch, max_tokens)
    if decl.shape is not None:
        b, n, _ = decl.shape
        if len(sequences) != b or any(len(s) > n for s in sequences):
            raise ApiError(
                422,
                "body_shape_mismatch",
                f"the body holds {len(sequences)} sequences of up to "
                f"{max((len(s) for s in sequences), default=0)} tokens, but {SHAPE_HEADER} declared "
                f"{b} of up to {n}; declare what you send",
            )
    for i, arr in enumerate(sequences):
        if not np.all(np.isfinite(arr)):
            raise ApiError(
                422,
                "not_finite",
                f"sequence {i} contains NaN or infinite entries; queries must be "
                f"finite real numbers",
                sequence=i,
            )
    return sequences


def _parse_json(body: bytes, d: int, max_batch: int, max_tokens: int) -> list[np.ndarray]:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers beyond Python's digit limit; RecursionError
        # deeply nested arrays.
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ApiError(
            400,
            "invalid_json",
            f"the request body is not valid JSON ({reason}); send "
            f'{{"sequences": [[[x_11, ..., x_1d], ...], ...]}} with Content-Type application/json',
        ) from None
    if not isinstance(payload, dict) or "sequences" not in payload:
        raise ApiError(
            422,
            "missing_sequences",
            'the body must be a JSON object with a "sequences" field: '
            "a list of sequences, each a list of tokens, each a list of d numbers",
        )
    raw = payload["sequences"]
    if not isinstance(raw, list):
        raise ApiError(422, "no_sequences", '"sequences" must be a list of sequences')
    if len(raw) > max_batch:
        raise ApiError(
            413,
            "too_many_sequences",
            f"{len(raw)} sequences in one request; this server answers at "
            f"most max_batch = {max_batch} per request. Split the batch.",
            max_batch=max_batch,
        )
    sequences, tokens = [], 0
    for i, seq in enumerate(raw):
        arr = _numeric(seq)
        if arr is None or arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != d:
            shape = "ragged or non-numeric" if arr is None else f"of shape {arr.shape}"
            raise ApiError(
                422,
                "bad_shape",
                f"sequence {i} is {shape}; every sequence must be a non-empty list of "
                f"tokens, each a list of exactly d = {d} numbers",
                sequence=i,
                d=d,
            )
        tokens += arr.shape[0]
        if tokens > max_tokens:
            raise ApiError(
                413,
                "too_many_tokens",
                f"the request holds more than max_tokens = {max_tokens} "
                f"tokens (counted over all sequences); send fewer or shorter sequences",
                max_tokens=max_tokens,
            )
        sequences.append(arr)
    return sequences


def _numeric(seq) -> np.ndarray | None:
    if not isinstance(seq, list) or not all(isinstance(t, list) for t in seq):
        return None
    if any(not isinstance(x, (int, float)) or isinstance(x, bool) for t in seq for x in t):
        return None
    try:
        arr = np.asarray(seq, dtype=np.float64)
    except (ValueError, OverflowError):
        return None  # ragged tokens, or an integer beyond float64
    return arr
