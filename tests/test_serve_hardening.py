"""`attnlab serve` under faults and abuse: layering, early budget checks, binary bodies, JSON errors,
zero-sequence batches, half-sent-request floods and kill -9 of the server (real subprocesses)."""

from __future__ import annotations

import http.server
import json
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import httpx
import numpy as np
import pytest
import torch

from attnlab import Oracle, OracleError, QueryShapeError
from attnlab.models import SingleHeadAttention
from attnlab.oracle.http import (
    BINARY_MEDIA,
    HttpTarget,
    NotAnAttnlabService,
    ServiceBudgetExhausted,
    encode_binary,
)
from attnlab.serve import KeyStore, save_target
from attnlab.serve.app import ServeConfig

from serve_helpers import ServerProcess, serve, wait_until

D = 4


@pytest.fixture
def head():
    return SingleHeadAttention.random(D, seed=3)


@pytest.fixture
def model_path(tmp_path, head):
    return save_target(head, tmp_path / "head.safetensors")


def truth(module, X):
    with torch.no_grad():
        return module(torch.as_tensor(np.asarray(X))).numpy()


def raw_exchange(
    url: str, head: bytes, body: bytes = b"", timeout_s: float = 5.0
) -> tuple[int, dict, float]:
    """Send raw bytes, read one response: (status, JSON body, seconds until the status line)."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - start
        header, _, rest = data.partition(b"\r\n\r\n")
        length = int(
            next(
                (
                    line.split(b":")[1]
                    for line in header.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                ),
                b"0",
            )
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    status = int(header.split(b" ")[1])
    return status, json.loads(rest[:length]), elapsed


# -- 1. layering ---------------------------------------------------------------------------------
def test_oracle_http_loads_neither_fastapi_nor_the_server():
    script = textwrap.dedent("""
        import sys, httpx
        from attnlab.oracle import Oracle
        info = {"kind": "single-head", "d": 3, "dtype": "float64", "max_batch": 8, "max_tokens": 64,
                "budget_left": 5}
        transport = httpx.MockTransport(lambda request: httpx.Response(200, json=info))
        oracle = Oracle.http("http://127.0.0.1:1", "ak_x", transport=transport)
        assert oracle.d == 3
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("fastapi", "starlette", "uvicorn")
                        or m.startswith("attnlab.serve"))
        print("LOADED", loaded)
    """)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "LOADED []" in out.stdout, out.stdout


# -- 3. the budget is checked from the headers, before the body ------------------------------------
def test_a_zero_budget_key_gets_402_before_sending_its_body(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite", budget=0) as srv:
        host = srv.url.removeprefix("http://")
        for length, extra in (
            (5_000_000, b""),
            (300_000_000, b""),
            (2_000_000, b"X-Attnlab-Shape: 256,256,4\r\n"),
        ):
            # Headers announce a large body (within the server's size limits); not one byte of it
            # is sent. The answer must come anyway.
            head = (
                (
                    f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {srv.key}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {length}\r\n"
                ).encode()
                + extra
                + b"\r\n"
            )
            status, body, elapsed = raw_exchange(srv.url, head)
            assert (
                status == 402 and body["error"] == "budget_exhausted" and body["budget_left"] == 0
            )
            assert elapsed < 2.0
        assert srv.spent() == 0 and srv.answered == 0


def test_a_declared_batch_beyond_the_budget_is_refused_unread(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite", budget=3) as srv:
        host = srv.url.removeprefix("http://")
        head = (
            f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {srv.key}\r\nX-Attnlab-Shape: 4,2,4\r\n"
            f"Content-Type: {BINARY_MEDIA}\r\nContent-Length: 256\r\n\r\n"
        ).encode()
        status, body, _ = raw_exchange(srv.url, head)
        assert status == 402 and body["requested"] == 4 and body["budget_left"] == 3
        # A body larger than its declared shape is refused from Content-Length alone.
        head = head.replace(b"4,2,4", b"1,2,4").replace(b"256", b"100000")
        status, body, _ = raw_exchange(srv.url, head)
        assert status == 413 and body["error"] == "body_too_large" and body["max_body_bytes"] == 64
        assert srv.spent() == 0


def test_binary_bodies_are_bit_exact_and_checked_against_their_shape(model_path, tmp_path, head):
    X = np.random.default_rng(0).standard_normal((40, 30, D))  # 4800 numbers: binary in "auto" mode
    with serve(model_path, tmp_path / "keys.sqlite", budget=100) as srv:
        target = HttpTarget(srv.url, srv.key)
        np.testing.assert_array_equal(target(X), truth(head, X))
        assert target.requests == 1 and srv.spent() == 40
        json_target = HttpTarget(srv.url, srv.key, wire="json")
        np.testing.assert_array_equal(json_target(X[:5, :3]), truth(head, X[:5, :3]))
        headers = {"X-API-Key": srv.key, "Content-Type": BINARY_MEDIA}
        r = httpx.post(f"{srv.url}/v1/query", content=encode_binary(X[:2]), headers=headers)
        assert r.status_code == 400 and r.json()["error"] == "missing_shape_header"
        r = httpx.post(
            f"{srv.url}/v1/query",
            content=encode_binary(X[:2])[:-8],
            headers={**headers, "X-Attnlab-Shape": "2,30,4"},
        )
        assert r.status_code == 422 and r.json()["error"] == "body_shape_mismatch"
        r = httpx.post(
            f"{srv.url}/v1/query",
            json={"sequences": X[:3, :2].tolist()},
            headers={"X-API-Key": srv.key, "X-Attnlab-Shape": "2,2,4"},
        )
        assert r.status_code == 422 and r.json()["error"] == "body_shape_mismatch"
        assert srv.spent() == 45


# -- 5. JSON errors everywhere, clear client errors -----------------------------------------------------
@pytest.mark.parametrize(
    "body, status, code",
    [
        (b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
        (b'{"sequences": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400, "invalid_json"),
        (b'{"sequences": [[[' + b"7" * 5000 + b", 0, 0, 0]]]}", 400, "invalid_json"),
        (b'{"sequences": [[[' + b"7" * 4000 + b", 0, 0, 0]]]}", 422, "bad_shape"),
        (b'{"sequences": [[[true, 0, 0, 0]]]}', 422, "bad_shape"),
        (b'{"sequences": [[[1e400, 0, 0, 0]]]}', 422, "not_finite"),
        (b"\xff\xfe garbage", 400, "invalid_json"),
    ],
)
def test_malformed_bodies_get_a_json_4xx(model_path, tmp_path, body, status, code):
    with serve(model_path, tmp_path / "keys.sqlite", config=ServeConfig(max_tokens=200_000)) as srv:
        r = httpx.post(f"{srv.url}/v1/query", content=body, headers={"X-API-Key": srv.key})
        assert r.status_code == status and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"] == code and srv.spent() == 0


def test_protocol_garbage_and_unknown_routes_are_answered_in_json(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        status, body, _ = raw_exchange(srv.url, b"NOT HTTP AT ALL\r\n\r\n")
        assert status == 400 and body["error"] == "bad_http"
        for r in (httpx.get(f"{srv.url}/nowhere"), httpx.get(f"{srv.url}/v1/query")):
            assert r.status_code in (404, 405) and "POST /v1/query" in r.json()["detail"]
        r = httpx.post(
            f"{srv.url}/v1/query",
            content=b"x",
            headers={"X-API-Key": srv.key, "Content-Type": "text/csv"},
        )
        assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    def _page(self):
        body = b"<html><body>It works!</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _page

    def log_message(self, *args):
        pass


@pytest.mark.parametrize("page", ["html", "foreign-json"])
def test_oracle_http_against_a_foreign_server_is_a_clear_error(page):
    if page == "html":
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}"
        transport = None
    else:
        server, url = None, "http://127.0.0.1:1"
        transport = httpx.MockTransport(
            lambda request: httpx.Response(200, json={"hello": "world"})
        )
    try:
        with pytest.raises(NotAnAttnlabService, match="not an attnlab serve endpoint"):
            Oracle.http(url, "ak_x", retries=0, transport=transport)
    finally:
        if server is not None:
            server.shutdown()


# -- 6. zero sequences ----------------------------------------------------------------------------------
def test_a_batch_of_zero_sequences_gets_an_empty_answer(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite", budget=0) as srv:
        r = httpx.post(
            f"{srv.url}/v1/query", json={"sequences": []}, headers={"X-API-Key": srv.key}
        )
        assert r.status_code == 200 and r.json() == {
            "outputs": [],
            "queries_used": 0,
            "budget_left": 0,
        }
        r = httpx.post(
            f"{srv.url}/v1/query",
            content=b"",
            headers={
                "X-API-Key": srv.key,
                "Content-Type": BINARY_MEDIA,
                "X-Attnlab-Shape": "0,3,4",
            },
        )
        assert r.status_code == 200 and r.json()["outputs"] == []
        target = HttpTarget(srv.url, srv.key)
        assert target(np.empty((0, 3, D))).shape == (0,) and target.requests == 0
        with pytest.raises(QueryShapeError, match="at least one token"):
            target(np.empty((2, 0, D)))
        assert srv.spent() == 0


# -- 2. half-sent request floods ------------------------------------------------------------------
def _half_sent(url: str, n: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(True)
        s.settimeout(5)
        try:
            s.connect((host, int(port)))
            s.sendall(b"POST /v1/query HTTP/1.1\r\nHost: x\r\nX-API-Key: ak_")  # and never the rest
        except OSError:
            s.close()
            continue
        socks.append(s)
    return socks


@pytest.mark.slow
def test_a_flood_of_half_sent_requests_does_not_lock_out_a_client(model_path, tmp_path, head):
    db = tmp_path / "keys.sqlite"
    with KeyStore(db) as admin:
        key = admin.add_key("alice", 1000)
    log = tmp_path / "server.log"
    with ServerProcess(model_path, db, log, max_connections=100, header_timeout_s=1.5) as server:
        flood = _half_sent(server.url, 400)  # 4x the cap, all left hanging
        try:
            oracle = Oracle.http(server.url, key, timeout=5.0, retries=2)
            rng = np.random.default_rng(0)
            latencies = []
            for _ in range(10):
                X = rng.standard_normal((4, 3, D))
                start = time.monotonic()
                np.testing.assert_array_equal(oracle(X), truth(head, X))
                latencies.append(time.monotonic() - start)
                flood += _half_sent(server.url, 40)  # the attack goes on
            assert max(latencies) < 2.0, latencies
            # Every half-sent request is dropped: at the cap, or at the header deadline.
            assert wait_until(lambda: all(_closed_by_peer(s) for s in flood), timeout_s=5)
        finally:
            for s in flood:
                s.close()
    assert log.stat().st_size < 20_000, log.read_text()[-2000:]  # repeated warnings are summarised


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_a_slow_loris_on_a_kept_alive_connection_is_cut_at_the_header_deadline(
    model_path, tmp_path
):
    with serve(
        model_path, tmp_path / "keys.sqlite", config=ServeConfig(header_timeout_s=1.0)
    ) as srv:
        host, port = srv.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=5) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            assert b"200 OK" in sock.recv(65536)
            start = time.monotonic()
            with pytest.raises(OSError):  # one header byte every 0.3 s: cut after about 1 s
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":
                    sock.sendall(bytes([byte]))
                    if sock.recv(1) == b"":
                        raise ConnectionResetError("closed")
            assert time.monotonic() - start < 3.0


# -- 4. kill -9 of the server -----------------------------------------------------------------------------
def _post(url: str, key: str, X: np.ndarray, idempotency_key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/query",
        content=encode_binary(X),
        timeout=30,
        headers={
            "X-API-Key": key,
            "Idempotency-Key": idempotency_key,
            "Content-Type": BINARY_MEDIA,
            "X-Attnlab-Shape": ",".join(map(str, X.shape)),
        },
    )


@pytest.mark.slow
def test_kill_9_after_charging_loses_nothing_and_a_retry_after_restart_is_answered(
    model_path, tmp_path, head
):
    db = tmp_path / "keys.sqlite"
    with KeyStore(db) as admin:
        key = admin.add_key("alice", 100)
    X = np.random.default_rng(1).standard_normal((7, 3, D))
    idem = str(uuid.uuid4())
    server = ServerProcess(model_path, db, tmp_path / "a.log", pause_after_charge_s=60)
    failed = []
    client = threading.Thread(target=lambda: failed.append(_safe_post(server.url, key, X, idem)))
    client.start()
    with KeyStore(db) as admin:
        assert wait_until(
            lambda: admin.get("alice").spent == 7, timeout_s=20
        )  # charged, not answered
    server.kill()
    client.join(timeout=30)
    assert failed == ["transport error"]
    with ServerProcess(model_path, db, tmp_path / "b.log") as restarted:
        assert restarted.refunded == 7  # the dead server's undelivered charge comes back at once
        r = _post(restarted.url, key, X, idem)  # no 409, no 120 s lockout
        assert r.status_code == 200, r.text
        np.testing.assert_array_equal(r.json()["outputs"], truth(head, X))
        again = _post(restarted.url, key, X, idem)
        assert again.headers.get("Idempotent-Replayed") == "true" and again.json() == r.json()
    with KeyStore(db) as admin:
        assert admin.get("alice").spent == 7  # paid once, for answers that were delivered


@pytest.mark.slow
def test_a_live_server_takes_over_a_dead_servers_request_without_waiting(
    model_path, tmp_path, head
):
    db = tmp_path / "keys.sqlite"
    with KeyStore(db) as admin:
        key = admin.add_key("alice", 100)
    X = np.random.default_rng(2).standard_normal((5, 2, D))
    idem = str(uuid.uuid4())
    with ServerProcess(model_path, db, tmp_path / "b.log") as survivor:
        doomed = ServerProcess(model_path, db, tmp_path / "a.log", pause_after_charge_s=60)
        client = threading.Thread(target=_safe_post, args=(doomed.url, key, X, idem))
        client.start()
        with KeyStore(db) as admin:
            assert wait_until(lambda: admin.get("alice").spent == 5, timeout_s=20)
        doomed.kill()
        client.join(timeout=30)
        start = time.monotonic()
        r = _post(survivor.url, key, X, idem)
        assert r.status_code == 200 and time.monotonic() - start < 5, r.text
        np.testing.assert_array_equal(r.json()["outputs"], truth(head, X))
    with KeyStore(db) as admin:
        assert admin.get("alice").spent == 5


def _safe_post(url, key, X, idem) -> str:
    try:
        return f"HTTP {_post(url, key, X, idem).status_code}"
    except httpx.TransportError:
        return "transport error"


def test_a_failed_request_is_resent_with_its_idempotency_key(model_path, tmp_path, head):
    X = np.random.default_rng(3).standard_normal((3, 2, D))
    with serve(model_path, tmp_path / "keys.sqlite") as srv:
        from serve_helpers import DropResponses

        target = HttpTarget(srv.url, srv.key, retries=0, transport=DropResponses(drops=1))
        with pytest.raises(
            OracleError, match="sending the same batch again reuses its Idempotency-Key"
        ):
            target(X)
        assert srv.spent() == 3  # charged, the answer lost on the way
        np.testing.assert_array_equal(target(X), truth(head, X))
        assert target.replayed == 1 and srv.spent() == 3


def test_server_budget_errors_carry_their_numbers(model_path, tmp_path):
    with serve(model_path, tmp_path / "keys.sqlite", budget=2) as srv:
        with pytest.raises(ServiceBudgetExhausted) as err:
            HttpTarget(srv.url, srv.key)(np.random.default_rng(0).standard_normal((3, 2, D)))
        assert (err.value.spent, err.value.budget, err.value.requested) == (0, 2, 3)
