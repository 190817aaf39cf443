"""Server faults against `attnlab serve`, bounded, on loopback only, stopping by themselves.

Each fault gets a fresh server process (so its memory peak is its own) serving a single head
(d = 8) from a keys database in a temporary folder, and a legitimate client that keeps querying
while the fault is injected:

- kill -9 mid-batch: the server holds a charged request (fault injection: `pause_after_charge_s`)
  and is killed; a new server starts on the same port and the client's retry, with the same
  Idempotency-Key, must get its answers;
- idle-connection flood: an attacker process holds up to 2,000 half-sent requests for 10 s,
  reopening every connection the server drops: once under the default connection cap (4,096),
  once with the cap at 500, where the server keeps evicting and the attacker keeps reconnecting;
- oversized bodies from a zero-budget key: requests announcing 314 MiB bodies, streamed until the
  server answers;
- concurrent clients on one budget: 8 threads spend one key, 10% of responses lost on the way
  back after the server answered (idempotent retries), until the budget is spent.

For every fault: queries lost (charged, answer never delivered), queries paid twice (the same
request body charged under more than one Idempotency-Key, read from the keys database), the
server's peak resident memory (VmHWM) and the legitimate client's p99 latency during the fault.

    python benchmarks/reliability_serve.py [--quick]

Writes benchmarks/results/reliability_serve.md. `server_rows(quick)` returns the rows as dicts
(benchmarks/reliability.py includes them in the project-wide table).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from attnlab.errors import OracleError
from attnlab.models import SingleHeadAttention
from attnlab.oracle.http import HttpTarget, ServiceBudgetExhausted
from attnlab.serve import KeyStore, save_target

D, TOKENS = 8, 8
RESULTS = Path(__file__).resolve().parent / "results"
COLUMNS = (
    "fault",
    "queries lost",
    "queries paid twice",
    "server memory peak",
    "legitimate-client latency p99",
)

SERVER = """
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
model, db, port, config = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
app = create_app(load_target(model), KeyStore(db), ServeConfig(**config))
sock = bind("127.0.0.1", port)
print("serving on", url_of(sock), flush=True)
serve_foreground(app, sock, log_level="warning")
"""


class Server:
    """`attnlab serve`'s app in its own process, on 127.0.0.1 (port 0 = a free one)."""

    def __init__(self, model: Path, db: Path, port: int = 0, **config):
        env = {
            **os.environ,
            "OPENBLAS_NUM_THREADS": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
        }
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(model), str(db), str(port), json.dumps(config)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            env=env,
            text=True,
        )
        line = self.process.stdout.readline()  # blocks until the server is listening (or died)
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if match is None:
            self.log.seek(0)
            raise RuntimeError(f"the server did not start: {self.log.read().decode()[-2000:]}")
        self.port = int(match.group(1))
        self.url = f"http://127.0.0.1:{self.port}"
        self.baseline_mib = self.memory()[0]

    def memory(self) -> tuple[float, float]:
        """(current, peak) resident memory in MiB, from /proc (Linux)."""
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return float("nan"), float("nan")
        field = {
            k: float(v.split()[0]) / 1024 for k, v in re.findall(r"(VmRSS|VmHWM):\s+(.+)", status)
        }
        return field.get("VmRSS", float("nan")), field.get("VmHWM", float("nan"))

    def log_bytes(self) -> int:
        return os.fstat(self.log.fileno()).st_size

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


class Legitimate(threading.Thread):
    """A client querying in a loop until stopped, recording each request's latency."""

    def __init__(self, url: str, key: str, seed: int, retries: int = 5):
        super().__init__(daemon=True)
        self.target = HttpTarget(url, key, timeout=10.0, retries=retries, seed=seed)
        self.rng = np.random.default_rng(seed)
        self.latencies: list[float] = []
        self.delivered = self.failures = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            X = self.rng.standard_normal((4, TOKENS, D)) / np.sqrt(D)
            start = time.perf_counter()
            try:
                self.delivered += self.target(X).size
                self.latencies.append(time.perf_counter() - start)
            except Exception:  # noqa: BLE001 - a failure is a measurement here
                self.failures += 1
            time.sleep(0.02)

    def finish(self) -> None:
        self.stop_event.set()
        self.join(timeout=60)

    def p99_ms(self) -> str:
        if not self.latencies:
            return "no answer"
        return f"{1e3 * np.percentile(self.latencies, 99):.1f} ms"


def paid_twice(db: Path) -> int:
    """Queries in request bodies that were charged under more than one Idempotency-Key."""
    with sqlite3.connect(db) as con:
        rows = con.execute(
            "SELECT fingerprint, COUNT(*), MAX(queries) FROM requests GROUP BY key_id, fingerprint "
            "HAVING COUNT(*) > 1"
        ).fetchall()
    return sum((count - 1) * queries for _, count, queries in rows)


def memory_cell(server: Server, peak: float) -> str:
    return f"{peak:.0f} MiB (+{peak - server.baseline_mib:.0f} over idle)"


def spent(db: Path, name: str) -> int:
    with KeyStore(db) as store:
        return store.get(name).spent


# -- the faults --------------------------------------------------------------------------------------
def kill_mid_batch(model: Path, db: Path, kills: int) -> dict:
    with KeyStore(db) as store:
        key = store.add_key("victim", 10**6)
    delivered, latencies, peak, server = 0, [], 0.0, None
    rng = np.random.default_rng(1)
    for _ in range(kills):
        server = Server(model, db, port=server.port if server else 0, pause_after_charge_s=30)
        target = HttpTarget(
            server.url, key, timeout=60, retries=10, backoff_s=0.2, max_backoff_s=2.0
        )
        X = rng.standard_normal((64, TOKENS, D)) / np.sqrt(D)
        result: list = []

        def ask(target=target, X=X, result=result) -> None:  # bound now: the loop rebinds them
            # A client that gave up while the server was down sends the same batch again: it reuses
            # the Idempotency-Key of the failed request (HttpTarget keeps it), so it pays once.
            for _ in range(10):
                try:
                    result.append(target(X))
                    return
                except OracleError:
                    time.sleep(1.0)

        start = time.perf_counter()
        client = threading.Thread(target=ask, daemon=True)
        client.start()
        deadline = time.monotonic() + 30
        while spent(db, "victim") < delivered + 64 and time.monotonic() < deadline:
            time.sleep(0.02)  # charged: the server now holds the answers it has not sent
        peak = max(peak, server.memory()[1])
        server.kill()
        server = Server(model, db, port=server.port)  # the client's retries find it here
        client.join(timeout=150)
        if result:
            delivered += result[0].size
            latencies.append(time.perf_counter() - start)
        peak = max(peak, server.memory()[1])
        server.stop()
        target.close()
    charged = spent(db, "victim")
    twice = paid_twice(db)
    p99 = (
        f"{1e3 * np.percentile(latencies, 99):.0f} ms (across the restart)"
        if latencies
        else "no answer"
    )
    return {
        "fault": f"kill -9 mid-batch (x{kills}, 64-query batches, retried with the same key)",
        "queries lost": charged - delivered - twice,
        "queries paid twice": twice,
        "server memory peak": memory_cell(server, peak),
        "legitimate-client latency p99": p99,
        "detail": f"{kills * 64} queries asked, {delivered} delivered, {charged} charged",
    }


ATTACKER = """
import select, socket, sys, time
port, connections, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
held, opened, stop_at = [], 0, time.monotonic() + seconds
while time.monotonic() < stop_at:
    poller = select.poll()  # not select(): the flood's descriptors go past 1024
    for s in held:
        poller.register(s, select.POLLIN)
    dropped = {fd for fd, _ in poller.poll(0)}
    keep = []
    for s in held:
        if s.fileno() in dropped:
            s.close()  # dropped by the server (eviction or header deadline): reopen it
        else:
            keep.append(s)
    held, burst = keep, 0
    while len(held) < connections and burst < 200:
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"POST /v1/query HTTP/1.1\\r\\nHost: x\\r\\nX-API-Key: ak_")
            held.append(s)
            opened += 1
        except OSError:
            s.close()
        burst += 1
    time.sleep(0.05)
print(opened, flush=True)
"""


def half_open_flood(
    model: Path, db: Path, connections: int, seconds: float, cap: int | None = None
) -> dict:
    with KeyStore(db) as store:
        key = store.add_key("client", 10**6)
    server = Server(model, db, **({"max_connections": cap} if cap else {}))
    client = Legitimate(server.url, key, seed=2)
    client.start()
    time.sleep(0.5)  # the client is connected (kept alive) before the flood, as a real one would be
    # The attacker is its own process: it shares the CPUs, not this process's interpreter lock.
    attack = subprocess.run(
        [sys.executable, "-c", ATTACKER, str(server.port), str(connections), str(seconds)],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    )
    opened = int(attack.stdout.strip() or 0)
    client.finish()
    peak = server.memory()[1]
    log = server.log_bytes()
    server.stop()
    charged, twice = spent(db, "client"), paid_twice(db)
    where = (
        f"server capped at {cap}: the attacker's are dropped and reopened" if cap else "default cap"
    )
    return {
        "fault": f"idle-connection flood ({connections} half-sent requests held, {seconds:g} s; {where})",
        "queries lost": charged - client.delivered - twice,
        "queries paid twice": twice,
        "server memory peak": memory_cell(server, peak),
        "legitimate-client latency p99": client.p99_ms(),
        "detail": f"{opened} attacker connections opened; client: {len(client.latencies)} answered, "
        f"{client.failures} failed; server log {log} bytes",
    }


def oversized_bodies(model: Path, db: Path, attempts: int, mib: int = 314) -> dict:
    with KeyStore(db) as store:
        broke = store.add_key("broke", 0)
        key = store.add_key("client", 10**6)
    server = Server(model, db)
    client = Legitimate(server.url, key, seed=3)
    client.start()
    answer_s, sent_mib = [], []
    chunk = b"[" + b"0.0," * 16383 + b"0.0]"  # ~64 KiB of a never-ending JSON body
    for _ in range(attempts):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                f"POST /v1/query HTTP/1.1\r\nHost: x\r\nX-API-Key: {broke}\r\nContent-Type: "
                f"application/json\r\nContent-Length: {mib * 2**20}\r\n\r\n".encode()
            )
            start, pushed, answer = time.perf_counter(), 0, b""
            s.setblocking(False)
            poller = select.poll()
            poller.register(s, select.POLLIN | select.POLLOUT)
            while pushed < mib * 2**20 and not answer and time.perf_counter() - start < 30:
                events = dict(poller.poll(1000)).get(s.fileno(), 0)
                readable, writable = (
                    events & (select.POLLIN | select.POLLHUP | select.POLLERR),
                    events & select.POLLOUT,
                )
                if readable:
                    try:
                        answer = s.recv(65536)
                    except OSError:
                        break
                    if not answer:
                        break
                elif writable:
                    try:
                        pushed += s.send(chunk)
                    except OSError:
                        break
            answer_s.append(time.perf_counter() - start)
            sent_mib.append(pushed / 2**20)
            if not answer.startswith(b"HTTP/1.1 402"):
                raise RuntimeError(f"a zero-budget key was answered {answer[:40]!r} instead of 402")
    client.finish()
    peak = server.memory()[1]
    server.stop()
    charged, twice = spent(db, "client") + spent(db, "broke"), paid_twice(db)
    return {
        "fault": f"oversized bodies from a zero-budget key ({attempts} x {mib} MiB announced)",
        "queries lost": charged - client.delivered - twice,
        "queries paid twice": twice,
        "server memory peak": memory_cell(server, peak),
        "legitimate-client latency p99": client.p99_ms(),
        "detail": f"402 after at most {1e3 * max(answer_s):.0f} ms, with at most {max(sent_mib):.1f} MiB "
        f"of body pushed into the socket",
    }


class LossyTransport(httpx.HTTPTransport):
    """Loses each POST response with probability p, after the server answered it."""

    def __init__(self, p: float, seed: int):
        super().__init__()
        self.p, self.rng = p, np.random.default_rng(seed)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and self.rng.random() < self.p:
            response.read()
            response.close()
            raise httpx.ReadError(
                "benchmark: response lost after the server answered", request=request
            )
        return response


def shared_budget(model: Path, db: Path, clients: int, budget: int) -> dict:
    with KeyStore(db) as store:
        key = store.add_key("shared", budget)
    server = Server(model, db)
    delivered, latencies, lock = [], [], threading.Lock()

    def spend(i: int) -> None:
        rng = np.random.default_rng([4, i])
        target = HttpTarget(
            server.url,
            key,
            retries=8,
            backoff_s=0.01,
            seed=i,
            transport=LossyTransport(0.1, seed=i),
        )
        got = 0
        while True:
            X = rng.standard_normal((int(rng.integers(1, 9)), TOKENS, D)) / np.sqrt(D)
            start = time.perf_counter()
            try:
                got += target(X).size
            except ServiceBudgetExhausted:
                break
            with lock:
                latencies.append(time.perf_counter() - start)
        with lock:
            delivered.append(got)

    threads = [threading.Thread(target=spend, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    peak = server.memory()[1]
    server.stop()
    charged, twice = spent(db, "shared"), paid_twice(db)
    exact = charged == sum(delivered) and charged <= budget
    return {
        "fault": f"{clients} concurrent clients on one budget of {budget} (10% of responses lost)",
        "queries lost": charged - sum(delivered) - twice,
        "queries paid twice": twice,
        "server memory peak": memory_cell(server, peak),
        "legitimate-client latency p99": f"{1e3 * np.percentile(latencies, 99):.1f} ms",
        "detail": f"charged {charged}, delivered {sum(delivered)}, budget {budget}: "
        f"{'exact' if exact else 'NOT EXACT'}",
    }


def server_rows(quick: bool = False) -> list[dict]:
    """One row per server fault (keys: COLUMNS, plus `detail`)."""
    with tempfile.TemporaryDirectory() as tmp:
        model = save_target(SingleHeadAttention.random(D, seed=0), Path(tmp) / "head.safetensors")
        return [
            kill_mid_batch(model, Path(tmp) / "kill.sqlite", kills=1 if quick else 3),
            half_open_flood(
                model,
                Path(tmp) / "flood.sqlite",
                connections=500 if quick else 2000,
                seconds=3.0 if quick else 10.0,
            ),
            half_open_flood(
                model,
                Path(tmp) / "churn.sqlite",
                connections=500 if quick else 2000,
                seconds=3.0 if quick else 10.0,
                cap=125 if quick else 500,
            ),
            oversized_bodies(model, Path(tmp) / "big.sqlite", attempts=3 if quick else 10),
            shared_budget(
                model,
                Path(tmp) / "shared.sqlite",
                clients=4 if quick else 8,
                budget=150 if quick else 1000,
            ),
        ]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " | detail |", "|---|" + "---:|" * 2 + "---:|---:|---|"]
    lines += ["| " + " | ".join(str(row[c]) for c in (*COLUMNS, "detail")) + " |" for row in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller floods and fewer kills (about 40 s)"
    )
    args = parser.parse_args()
    start = time.perf_counter()
    rows = server_rows(args.quick)
    text = (
        f"# attnlab serve under faults{' (--quick)' if args.quick else ''}\n\n"
        f"`python benchmarks/reliability_serve.py{' --quick' if args.quick else ''}` on {os.cpu_count()} "
        f"CPU cores (shared with other work; 1-minute load average {os.getloadavg()[0]:.1f} at the end), "
        f"{time.perf_counter() - start:.0f} s. Single head, d = {D}, {TOKENS}-token sequences; one server "
        f"process per fault, on 127.0.0.1.\n\n{table(rows)}\n"
    )
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"reliability_serve{'_quick' if args.quick else ''}.md").write_text(text)
    return 0 if all(r["queries lost"] == 0 and r["queries paid twice"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
