"""A real `attnlab serve` app on 127.0.0.1 (uvicorn on a thread, free port) for the serve tests."""

from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from attnlab.serve import KeyStore, load_target
from attnlab.serve.app import ServeConfig, create_app
from attnlab.serve.runner import BackgroundServer


@dataclass
class Served:
    url: str
    key: str
    store: KeyStore
    app: object

    @property
    def answered(self) -> int:
        """Sequences the server's model actually answered (its own Oracle's count)."""
        return self.app.state.oracle.queries

    def spent(self, name: str = "alice") -> int:
        return self.store.get(name).spent


@contextmanager
def serve(model_path: Path, db_path: Path, budget: int = 1000, config: ServeConfig = ServeConfig()):
    """Serve the target in model_path with a key 'alice' (created if the db has none)."""
    store = KeyStore(db_path)
    key = store.add_key("alice", budget) if not store.keys() else ""
    app = create_app(load_target(model_path), store, config)
    try:
        with BackgroundServer(app) as url:
            yield Served(url, key, store, app)
    finally:
        store.close()


class DropResponses(httpx.HTTPTransport):
    """Delivers each request to the server, then loses the first `drops` responses on the way back."""

    def __init__(self, drops: int = 1):
        super().__init__()
        self.drops = drops

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and self.drops > 0:
            response.read()  # the server has finished: it answered and charged
            response.close()
            self.drops -= 1
            raise httpx.ReadError(
                "simulated connection loss after the server answered", request=request
            )
        return response


class FailFirst(httpx.HTTPTransport):
    """Answers the first `failures` POSTs with `status` (503 by default) without reaching the server."""

    def __init__(self, failures: int = 1, status: int = 503, headers: dict | None = None):
        super().__init__()
        self.failures, self.status, self.headers = failures, status, headers or {}

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and self.failures > 0:
            self.failures -= 1
            return httpx.Response(
                self.status,
                json={"error": "simulated", "detail": "simulated failure"},
                headers=self.headers,
                request=request,
            )
        return super().handle_request(request)


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 in front of `upstream_url`: it forwards every request, but cuts the
    connection instead of forwarding the server's response to the first `drops` POSTs."""

    def __init__(self, upstream_url: str, drops: int = 1):
        host, port = upstream_url.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.drops, self.dropped = drops, 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _take_drop(self) -> bool:
        with self._lock:
            if self.dropped < self.drops:
                self.dropped += 1
                return True
            return False

    def _relay(self, client: socket.socket) -> None:
        upstream = socket.create_connection(self.upstream)
        last_method = [b""]

        def requests_up() -> None:
            try:
                while data := client.recv(65536):
                    if data.startswith((b"POST ", b"GET ")):
                        last_method[0] = data.split(b" ", 1)[0]
                    upstream.sendall(data)
            except OSError:
                pass

        threading.Thread(target=requests_up, daemon=True).start()
        try:
            while data := upstream.recv(65536):
                if last_method[0] == b"POST" and self._take_drop():
                    break  # the server answered (and recorded its answer); the client never hears it
                client.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(
                        socket.SHUT_RDWR
                    )  # close() alone would wait for the blocked recv above
                except OSError:
                    pass
                sock.close()

    def close(self) -> None:
        self._listener.close()


SERVER_SCRIPT = """
import os, threading, time
parent = os.getppid()
def _orphaned():  # die with the benchmark or test that started us, even after its kill -9
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)
threading.Thread(target=_orphaned, daemon=True).start()
import json, sys
from attnlab.serve import KeyStore, load_target
from attnlab.serve.app import ServeConfig, create_app
from attnlab.serve.runner import bind, serve_foreground, url_of
model, db, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
store = KeyStore(db)
app = create_app(load_target(model), store, ServeConfig(**config))
sock = bind("127.0.0.1", 0)
print("serving on", url_of(sock), "refunded", app.state.refunded, file=sys.stderr, flush=True)
serve_foreground(app, sock, log_level="warning")
"""


class ServerProcess:
    """A real server process (uvicorn, its own interpreter) on 127.0.0.1 and a free port.

    `config` holds ServeConfig fields. The server's stderr goes to `log`; `kill()` is kill -9.
    """

    def __init__(
        self, model_path: Path, db_path: Path, log: Path, start_timeout_s: float = 60.0, **config
    ):
        import json
        import os
        import re
        import subprocess
        import sys
        import time

        self.log = log
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self._out = open(log, "ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                SERVER_SCRIPT,
                str(model_path),
                str(db_path),
                json.dumps(config),
            ],
            stderr=self._out,
            env=env,
        )
        deadline = time.monotonic() + start_timeout_s
        while not (
            match := re.search(
                r"serving on (http://127\.0\.0\.1:\d+) refunded (\d+)", log.read_text()
            )
        ):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"the test server did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.05)
        self.url, self.refunded = match.group(1), int(match.group(2))
        self.pid = self.process.pid

    def kill(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)
        self._out.close()

    def stop(self) -> None:
        import signal

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=10)
        self._out.close()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def wait_until(condition, timeout_s: float = 10.0, every_s: float = 0.02) -> bool:
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(every_s)
    return condition()
