"""Connection hygiene for uvicorn: a header deadline, a connection cap, and a log that cannot flood.

uvicorn (0.29+) has a keep-alive timeout and `limit_concurrency`, but no deadline for the request
headers (a connection that trickles one header byte a minute is kept for ever, and data arriving
on a kept-alive connection cancels the keep-alive timer), and `limit_concurrency` does not cap
connections: it only answers 503 once a request's headers are complete, so half-sent requests
still pile up until the process runs out of file descriptors. `GuardedH11Protocol` adds both:

- every connection must deliver complete request headers within `header_timeout_s` of opening
  (or of its previous response), else it is closed;
- at most `max_connections` connections are open; a new one beyond that evicts the connection
  that has waited longest for its headers, among those that never completed a request first (a
  half-sent request never does), then among idle kept-alive ones; it is refused only if every
  open connection is busy with a request. A legitimate client that keeps its connection alive
  is thus never evicted by a flood of half-sent requests.

Body deadlines are enforced by the app (attnlab.serve.requests.read_body). We stay on uvicorn (over
hypercorn) because it is already the dependency, and these two gaps are small to fill on its h11
protocol; the tests pin the behaviour, so an upstream change that breaks it fails loudly.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger("attnlab.serve")


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """A protocol class for one server (its waiting-room bookkeeping is per server)."""
    if not header_timeout_s > 0 or max_connections < 1:
        raise ValueError(
            f"header_timeout_s must be > 0 and max_connections >= 1, got {header_timeout_s} "
            f"and {max_connections}"
        )

    class GuardedH11Protocol(H11Protocol):
        # Connections waiting for request headers, oldest first (dicts keep insertion order):
        # those that never completed a request, and idle kept-alive ones.
        waiting_new: dict[GuardedH11Protocol, float] = {}
        waiting_served: dict[GuardedH11Protocol, float] = {}
        evicted = timed_out = refused = 0

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer = None
            self._seen_cycle = None
            self._served = False
            if len(self.connections) > max_connections and not self._evict_one():
                type(self).refused += 1
                logger.warning(
                    "connection cap of %d reached and every connection is busy: refusing one",
                    max_connections,
                )
                transport.close()
                return
            self._await_headers()

        def _evict_one(self) -> bool:
            for pool in (self.waiting_new, self.waiting_served):
                victim = next(iter(pool), None)
                if victim is not None:
                    type(self).evicted += 1
                    logger.warning(
                        "connection cap of %d reached: closing the connection that waited longest "
                        "for its request headers",
                        max_connections,
                    )
                    victim._drop()
                    return True
            return False

        def _forget(self) -> None:
            self.waiting_new.pop(self, None)
            self.waiting_served.pop(self, None)

        def _is_waiting(self) -> bool:
            return self in self.waiting_new or self in self.waiting_served

        def _await_headers(self) -> None:
            self._cancel_header_timer()
            self._forget()
            (self.waiting_served if self._served else self.waiting_new)[self] = time.monotonic()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _headers_arrived(self) -> None:
            self._cancel_header_timer()
            self._forget()

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self._is_waiting():
                type(self).timed_out += 1
                logger.warning(
                    "closed a connection that sent no complete request headers within %g s",
                    header_timeout_s,
                )
                self._drop()

        def _drop(self) -> None:
            self._forget()
            self._cancel_header_timer()
            if not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle  # a new request's headers are complete
                self._headers_arrived()

        def on_response_complete(self) -> None:
            self._served = True
            super().on_response_complete()
            if not self.transport.is_closing() and (self.cycle is self._seen_cycle):
                self._await_headers()
            if self.cycle is not None and self.cycle is not self._seen_cycle:
                self._seen_cycle = self.cycle  # a pipelined request was already buffered
                self._headers_arrived()

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers unparsable HTTP in plain text; our errors are JSON everywhere.
            body = json.dumps(
                {"error": "bad_http", "detail": f"{msg} Send HTTP/1.1 with headers under 16 KiB."}
            )
            event = h11.Response(
                status_code=400,
                reason=b"Bad Request",
                headers=[
                    (b"content-type", b"application/json"),
                    (b"connection", b"close"),
                    (b"content-length", str(len(body)).encode()),
                ],
            )
            try:
                for part in (event, h11.Data(data=body.encode()), h11.EndOfMessage()):
                    self.transport.write(self.conn.send(part))
            except h11.LocalProtocolError:
                pass  # the connection is past the point of answering
            self.transport.close()

        def connection_lost(self, exc) -> None:
            self._forget()
            self._cancel_header_timer()
            super().connection_lost(exc)

    return GuardedH11Protocol


class RepeatLimiter(logging.Filter):
    """Lets at most `burst` records with the same message template through per `window_s` seconds.

    The first record after a quiet window says how many were suppressed, so nothing is hidden,
    only summarised: a flood of bad connections cannot grow the log by megabytes per second.
    """

    def __init__(self, burst: int = 5, window_s: float = 10.0):
        super().__init__()
        self.burst, self.window_s = burst, window_s
        self._seen: dict[tuple[str, str], list] = {}  # key -> [window start, count, suppressed]
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        now = time.monotonic()
        with self._lock:
            entry = self._seen.setdefault(key, [now, 0, 0])
            if now - entry[0] > self.window_s:
                suppressed = entry[2]
                entry[:] = [now, 0, 0]
                if suppressed:
                    record.msg = f"{record.msg} [{suppressed} similar messages suppressed]"
            entry[1] += 1
            if entry[1] > self.burst:
                entry[2] += 1
                return False
            if len(self._seen) > 10_000:
                self._seen.clear()
            return True


LIMITED_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "asyncio", "attnlab.serve")


def limit_repeated_logs(burst: int = 5, window_s: float = 10.0) -> RepeatLimiter:
    """Install one RepeatLimiter on uvicorn's, asyncio's and attnlab.serve's loggers (idempotent)."""
    limiter = RepeatLimiter(burst, window_s)
    for name in LIMITED_LOGGERS:
        log = logging.getLogger(name)
        for old in [f for f in log.filters if isinstance(f, RepeatLimiter)]:
            log.removeFilter(old)
        log.addFilter(limiter)
    return limiter
