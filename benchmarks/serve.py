"""Bounded load test of `attnlab serve` on loopback: throughput, and budgets that stay exact.

An `attnlab serve` subprocess serves a single head (d = 8, 16-token sequences). K client threads,
each with its own HttpTarget, send a fixed number of requests between them (or stop at the time
limit). Three kinds of rows:

- throughput: every client has its own ample key; requests/s and queries/s over HTTP, beside the
  same batches answered by an in-process Oracle (the ratio is HTTP's overhead);
- shared budget: all clients spend one key whose budget is smaller than their demand, with
  random batch sizes; the server must charge exactly what it answered and never exceed the budget;
- dropped responses: as above, but each response is lost on the way back with probability 0.1
  after the server answered; idempotent retries must keep the charge equal to what clients got.

    python benchmarks/serve.py [--quick] [--time-limit 120]

Writes benchmarks/results/serve.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import torch
from tqdm import tqdm

from attnlab import Oracle
from attnlab.models import SingleHeadAttention
from attnlab.oracle.http import HttpTarget, ServiceBudgetExhausted
from attnlab.serve import KeyStore, save_target

D, TOKENS = 8, 16
RESULTS = Path(__file__).resolve().parent / "results"


class LossyTransport(httpx.HTTPTransport):
    """Loses each POST response with probability p, after the server has answered it."""

    def __init__(self, p: float, seed: int):
        super().__init__()
        self.p, self.rng, self.dropped = p, np.random.default_rng(seed), 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.method == "POST" and self.rng.random() < self.p:
            response.read()
            response.close()
            self.dropped += 1
            raise httpx.ReadError(
                "benchmark: response lost after the server answered", request=request
            )
        return response


@dataclass
class Run:
    ok: int = 0
    refused: int = 0
    answered: int = 0
    retries: int = 0
    dropped: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def start_server(model: Path, db: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "COLUMNS": "200"}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "attnlab",
            "serve",
            str(model),
            "--port",
            "0",
            "--keys-db",
            str(db),
            "--log-level",
            "warning",
        ],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen, deadline = "", time.monotonic() + 60
    while not (match := re.search(r"http://127\.0\.0\.1:\d+", seen)):
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"attnlab serve did not start:\n{seen}")
        seen += server.stderr.readline()
    # Keep draining stderr so that a chatty server never blocks on a full pipe.
    threading.Thread(target=server.stderr.read, daemon=True).start()
    return server, match.group(0)


def load(
    url: str,
    keys: list[str],
    requests: int,
    batch_sizes: tuple[int, int],
    deadline: float,
    drop_p: float,
    seed: int,
) -> Run:
    """len(keys) client threads share `requests` tickets; client i uses keys[i]."""
    run, tickets = Run(), iter(range(requests))
    ticket_lock = threading.Lock()

    def client(i: int) -> None:
        rng = np.random.default_rng([seed, i])
        transport = LossyTransport(drop_p, seed=seed * 1000 + i) if drop_p else None
        target = HttpTarget(url, keys[i], transport=transport, retries=8, backoff_s=0.01, seed=i)
        target.info()
        while time.monotonic() < deadline:
            with ticket_lock:
                if next(tickets, None) is None:
                    break
            X = rng.standard_normal(
                (int(rng.integers(batch_sizes[0], batch_sizes[1] + 1)), TOKENS, D)
            ) / np.sqrt(D)
            start = time.perf_counter()
            try:
                outputs = target(X)
            except ServiceBudgetExhausted:
                with run.lock:
                    run.refused += 1
                continue
            with run.lock:
                run.ok += 1
                run.answered += outputs.size
                run.latencies.append(time.perf_counter() - start)
        with run.lock:
            run.retries += target.retried
            run.dropped += transport.dropped if transport else 0
        target.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(keys))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run.seconds = time.perf_counter() - start
    return run


def local_rate(
    head: SingleHeadAttention, batch: int, seconds: float = 0.2, repeats: int = 3
) -> float:
    """Queries/s of an in-process Oracle on the same batches (no HTTP, no JSON, no SQLite).

    The best of a few short runs: the machine is shared, and the best run is the least disturbed.
    """
    X = np.random.default_rng(0).standard_normal((batch, TOKENS, D)) / np.sqrt(D)
    rates = []
    for _ in range(repeats):
        oracle = Oracle(head, d=D)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            oracle(X)
        rates.append(oracle.queries / (time.perf_counter() - start))
    return max(rates)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer requests and client counts")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds for the whole run (default 150, quick 45)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    time_limit = args.time_limit or (45.0 if args.quick else 150.0)
    requests = 120 if args.quick else 600
    clients = (1, 4) if args.quick else (1, 4, 16)
    batches = (1, 32)
    budget = 300 if args.quick else 1500
    end = time.monotonic() + time_limit

    # The server runs torch on one thread (`attnlab serve --torch-threads 1`); so does the baseline.
    torch.set_num_threads(1)
    head = SingleHeadAttention.random(D, seed=args.seed)
    load_before = os.getloadavg()[0]
    throughput, exactness = [], []
    with tempfile.TemporaryDirectory() as tmp:
        model = save_target(head, Path(tmp) / "head.safetensors")
        db = Path(tmp) / "keys.sqlite"
        store = KeyStore(db)
        server, url = start_server(model, db)
        plan = [("throughput", k, b, 0.0) for b in batches for k in clients]
        plan += [("shared budget", k, 0, 0.0) for k in clients[1:]] + [
            ("dropped responses", clients[-1], 0, 0.1)
        ]
        try:
            for n, (kind, k, batch, drop_p) in enumerate(
                tqdm(plan, desc="serve load", disable=None, file=sys.stderr)
            ):
                deadline = min(end, time.monotonic() + time_limit / len(plan) * 1.5)
                if kind == "throughput":
                    keys = [store.add_key(f"t{n}-{i}", 10**9) for i in range(k)]
                    # In-process rate just before and just after, so that both meet the same machine load.
                    local = local_rate(head, batch)
                    run = load(url, keys, requests, (batch, batch), deadline, 0.0, args.seed)
                    local = (local + local_rate(head, batch)) / 2
                    http_rate = run.answered / run.seconds
                    throughput.append(
                        (
                            k,
                            batch,
                            run.ok,
                            run.seconds,
                            run.ok / run.seconds,
                            http_rate,
                            local,
                            local / http_rate,
                            1e3 * np.percentile(run.latencies, 50),
                            1e3 * np.percentile(run.latencies, 95),
                        )
                    )
                else:
                    name = f"s{n}"
                    key = store.add_key(name, budget)
                    # Demand (requests * mean batch 4.5) is well above the budget: clients run it dry.
                    run = load(url, [key] * k, requests, (1, 8), deadline, drop_p, args.seed + n)
                    spent = store.get(name).spent
                    exact = spent == run.answered and spent <= budget
                    exactness.append(
                        (
                            kind,
                            k,
                            run.ok,
                            run.refused,
                            run.dropped,
                            run.retries,
                            run.answered,
                            spent,
                            budget,
                            "yes" if exact else "NO",
                        )
                    )
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=20)
            store.close()

    header = [
        f"# attnlab serve: bounded load test on loopback{' (--quick)' if args.quick else ''}",
        "",
        f"`python benchmarks/serve.py{' --quick' if args.quick else ''}` on {platform.machine()} with "
        f"{os.cpu_count()} CPU cores, Python {platform.python_version()}; server and clients share the machine. "
        f"Target: single head, d = {D}, {TOKENS}-token sequences; server = `attnlab serve` subprocess "
        f"(uvicorn, one process, torch on 1 thread); clients = threads, one HttpTarget each; {requests} requests per row "
        f"(fewer if a row hit its share of the {time_limit:.0f} s limit). The machine is shared with other "
        f"work: 1-minute load average {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after. "
        f"In-process rate of a row: mean of the best of 3 runs of 0.2 s just before and just after its HTTP run.",
        "",
        "## Throughput (own key per client)",
        "",
        "| clients | batch | requests | s | requests/s | queries/s (HTTP) | queries/s (in-process Oracle) "
        "| in-process / HTTP | p50 ms | p95 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rows = [
        f"| {k} | {b} | {ok} | {s:.1f} | {rps:.0f} | {qps:.0f} | {lq:.0f} | {ratio:.1f}x | {p50:.1f} | {p95:.1f} |"
        for k, b, ok, s, rps, qps, lq, ratio, p50, p95 in throughput
    ]
    rows += [
        "",
        "## Budgets stay exact under concurrent clients (one shared key, batch sizes 1-8, demand > budget)",
        "",
        "| scenario | clients | answered requests | refused (402) | responses lost | client retries "
        "| queries received by clients | server charged | budget | charged == received <= budget |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    rows += [
        f"| {kind} | {k} | {ok} | {ref} | {drop} | {retry} | {got} | {spent} | {bud} | {exact} |"
        for kind, k, ok, ref, drop, retry, got, spent, bud, exact in exactness
    ]
    table = "\n".join(header + rows) + "\n"
    print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.md").write_text(table)
    return 0 if all(row[-1] == "yes" for row in exactness) else 1


if __name__ == "__main__":
    sys.exit(main())
