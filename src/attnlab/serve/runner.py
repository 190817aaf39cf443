"""Running the app under uvicorn: in the foreground (the CLI) or on a background thread (tests, benchmarks).

Both bind the socket themselves, so port 0 picks a free port and the real one is known before the
first request.
"""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from attnlab.errors import AttnlabError
from attnlab.serve.app import ServeConfig
from attnlab.serve.protection import guarded_protocol, limit_repeated_logs


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit this. Without it uvicorn's separate header and body writes wait
    # on the client's delayed ACK: 40 ms per request on Linux loopback (measured: 45 ms -> 1.2 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ValueError(
            f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port (0 = any free one)"
        ) from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, tls: bool = False) -> str:
    host, port = sock.getsockname()[:2]
    scheme = "https" if tls else "http"
    return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"


def _config(app: FastAPI, log_level: str, tls: tuple[str, str] | None = None) -> uvicorn.Config:
    serve = getattr(app.state, "config", None) or ServeConfig()
    max_connections = min(serve.max_connections, _raise_fd_limit() - 64)
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
        http=guarded_protocol(serve.header_timeout_s, max_connections),
        # A safety net behind the connection cap: never more requests in progress than connections.
        limit_concurrency=max_connections + 1,
        timeout_keep_alive=max(1, round(serve.keep_alive_s)),
        h11_max_incomplete_event_size=16 * 1024,  # request line + headers
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    return config


def _raise_fd_limit() -> int:
    """Lift the soft open-files limit to the hard one; returns the limit now in force."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 1 << 16
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft if soft != resource.RLIM_INFINITY else 1 << 16


def serve_foreground(
    app: FastAPI, sock: socket.socket, log_level: str = "info", tls: tuple[str, str] | None = None
) -> None:
    """Serve until interrupted (Ctrl-C / SIGTERM), on an already bound socket."""
    config = _config(app, log_level, tls)
    limit_repeated_logs()
    uvicorn.Server(config).run(sockets=[sock])


class BackgroundServer:
    """`with BackgroundServer(app) as url:` serves `app` on 127.0.0.1 on a free port until the block ends."""

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, start_timeout_s: float = 30.0
    ):
        self.app, self.host, self.port, self.start_timeout_s = app, host, port, start_timeout_s
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def start(self) -> str:
        sock = bind(self.host, self.port)
        self.url = url_of(sock)
        self._server = uvicorn.Server(_config(self.app, "warning"))
        limit_repeated_logs()
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, name="attnlab-serve", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AttnlabError(
                    f"the server on {self.url} did not start within {self.start_timeout_s} s; "
                    f"see the uvicorn log above for why"
                )
            time.sleep(0.01)
        return self.url

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
