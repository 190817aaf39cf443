"""`benchmarks/single_head.py --scale`: Llama-size heads at the information limit.

For d in {512, 1024, 2048, 4096}, full rank up to 2048 and r in {64, 128} (plus an affine head at
(4096, 128)): queries / limit, max-entry relative error of W, seconds, seconds inside the target,
the learner's fraction (everything outside the target's call, the Oracle's checks included, over
the target's time), the Oracle's own share of that, and the learner's peak memory (tracemalloc:
numpy allocations of learner and Oracle; torch's own buffers inside the target are not traced).

Targets. Full rank: `SingleHeadAttention` (dense W, d^2 flops per query). Low rank: `FactoredHead`
below, which computes scores the way a real head does, q = Q x_N and k_i = K x_i with r x d
projections (O(r d) per query) — a harder test for the learner, whose work per query is O(d).

The physical limit: the target alone answering the limit's number of queries in a tight batched
loop (no learner, no Oracle), measured on `LIMIT_BATCHES` batches and scaled by queries.

A case whose projected target time exceeds --case-seconds runs as a prefix under an Oracle budget
(the extraction is stopped by BudgetExhausted); its times are extrapolated linearly in queries and
its row says so; its error is not measured ("—").
"""

from __future__ import annotations

import json
import math
import platform
import resource
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

from attnlab import BudgetExhausted, Oracle
from attnlab.extract import single_head
from attnlab.models import SingleHeadAttention
from attnlab.oracle.device import DeviceOracle, DeviceTarget, TimedTarget

RESULTS = Path(__file__).resolve().parent / "results"
LIMIT_BATCHES = 8
CASES = [
    (512, None, False),
    (512, 64, False),
    (512, 128, False),
    (1024, None, False),
    (1024, 64, False),
    (1024, 128, False),
    (2048, None, False),
    (2048, 64, False),
    (2048, 128, False),
    (4096, 64, False),
    (4096, 128, False),
    (4096, 128, True),
]


class FactoredHead(torch.nn.Module):
    """A head of rank r computed from its projections: scores (K x_i) . (Q x_N) [+ u . x_i]."""

    def __init__(self, d: int, r: int, affine: bool = False, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        scale = 1.0 / math.sqrt(math.sqrt(r))  # W = K^T Q has entries of size ~1
        self.Q = torch.nn.Parameter(torch.randn(r, d, generator=g, dtype=torch.float64) * scale)
        self.K = torch.nn.Parameter(torch.randn(r, d, generator=g, dtype=torch.float64) * scale)
        self.v = torch.nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64))
        self.u = (
            torch.nn.Parameter(torch.randn(d, generator=g, dtype=torch.float64)) if affine else None
        )
        self.c = (
            torch.nn.Parameter(torch.randn((), generator=g, dtype=torch.float64))
            if affine
            else None
        )

    @property
    def d(self) -> int:
        return self.v.shape[0]

    def W(self) -> np.ndarray:
        return (self.K.T @ self.Q).detach().numpy()

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        q = X[:, -1, :] @ self.Q.T
        scores = torch.einsum("bnr,br->bn", X @ self.K.T, q)
        if self.u is not None:
            scores = scores + X @ self.u
        out = torch.einsum("bn,bn->b", torch.softmax(scores, dim=-1), X @ self.v)
        return out + self.c if self.c is not None else out


def limit(d: int, r: int | None, affine: bool) -> int:
    r = d if r is None else r
    return 2 * r * d - r * r + d + (d + 1 if affine else 0)


def build(d: int, r: int | None, affine: bool, seed: int):
    if r is None:
        head = SingleHeadAttention.random(d, seed=seed)
        return head, head.W.detach().numpy()
    head = FactoredHead(d, r, affine, seed=seed)
    return head, head.W()


def target_alone(head, d: int, queries: int) -> tuple[float, int]:
    """Seconds the target alone needs for `queries` two-token queries (projected from a sample)."""
    batch = max(1, (4 << 20) // (16 * d))
    X = torch.randn(batch, 2, d, dtype=torch.float64)
    with torch.no_grad():
        head(X)
        started = time.perf_counter()
        for _ in range(LIMIT_BATCHES):
            head(X)
        per_query = (time.perf_counter() - started) / (LIMIT_BATCHES * batch)
    return per_query * queries, LIMIT_BATCHES * batch


class Heartbeat:
    """Every `every` seconds, one stderr line of a long case's progress (queries, seconds, target
    seconds), so that a run stopped before its end still leaves an extrapolation behind."""

    def __init__(self, oracle, timed, need: int, started: float, every: float = 300.0):
        self.oracle, self.timed, self.need, self.started = oracle, timed, need, started
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._done.wait(every):
            queries = self.oracle.queries
            line = {
                "progress_queries": queries,
                "limit": self.need,
                "seconds": time.perf_counter() - self.started,
                "target_s": self.timed.seconds,
            }
            print(json.dumps(line), file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._done.set()


def run_case(
    d: int,
    r: int | None,
    affine: bool,
    seed: int,
    case_seconds: float,
    prefix_seconds: float,
    oracle_kind: str = "device",
    memory: bool = True,
) -> dict:
    head, W = build(d, r, affine, seed)
    need = limit(d, r, affine)
    alone, sampled = target_alone(head, d, need)
    partial = alone > case_seconds
    budget = None
    if partial:  # a prefix worth about prefix_seconds of target time
        budget = max(4 * d, int(need * prefix_seconds / alone))
    if oracle_kind == "device":  # the torch fast path (oracle/device.py), on the CPU here
        timed = DeviceTarget(head, "cpu")
        oracle = DeviceOracle(timed, d=d, budget=budget)
    else:
        timed = TimedTarget(head)
        oracle = Oracle(timed, d=d, budget=budget)
    row = {
        "d": d,
        "r": "full" if r is None else r,
        "affine": affine,
        "limit": need,
        "target_alone_s": alone,
        "alone_sampled": sampled,
        "partial": partial,
    }
    peak_bytes = 0
    if memory:
        tracemalloc.start()
    started, cpu_started = time.perf_counter(), time.thread_time()
    beat = Heartbeat(oracle, timed, need, started)
    try:
        result = single_head(oracle, rank=r, affine=affine, seed=seed, fidelity_samples=0)
        # before the error below (a d x d pass, not the learner's): CPU over the extraction only
        cpu = time.thread_time() - cpu_started
        if memory:  # the extraction's peak, before the error's two d x d temporaries
            _, peak_bytes = tracemalloc.get_traced_memory()
        seconds = result.seconds
        oracle_seconds = result.info["oracle_seconds"]
        row.update(
            queries=result.queries,
            error=float(np.max(np.abs(result.W - W)) / np.max(np.abs(W))),
            max_logit=result.info["max_abs_logit"],
        )
        del result
    except BudgetExhausted:
        cpu = time.thread_time() - cpu_started
        if memory:
            _, peak_bytes = tracemalloc.get_traced_memory()
        seconds = time.perf_counter() - started
        oracle_seconds = float("nan")
        row.update(queries=oracle.queries, error=None, max_logit=None)
    finally:
        beat.stop()
    peak = float("nan")
    if memory:
        peak = float(peak_bytes)
        tracemalloc.stop()
    row.update(
        seconds=seconds,
        target_s=timed.seconds,
        oracle_s=oracle_seconds,
        peak_mib=peak / 2**20,
        learner_fraction=(seconds - timed.seconds) / timed.seconds,
        cpu_s=cpu,
        target_cpu_s=timed.cpu_seconds,
        learner_cpu_fraction=(cpu - timed.cpu_seconds) / timed.cpu_seconds,
        oracle_fraction=(oracle_seconds - timed.seconds) / timed.seconds if not partial else None,
        maxrss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    )
    if partial:  # the whole extraction, projected from the prefix (linear in queries)
        row.update(
            projected_seconds=seconds * need / row["queries"],
            projected_target_s=timed.seconds * need / row["queries"],
        )
    return row


ORACLE_TEXT = {
    "device": "`DeviceOracle(DeviceTarget(head, 'cpu'))`, the torch fast path of oracle/device.py",
    "numpy": "`Oracle(head)`, the numpy Oracle",
}


def fmt(value, spec: str) -> str:
    return (
        "—"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else format(value, spec)
    )


def _seconds(value: float) -> str:
    """Seconds to a tenth (a sub-second case would read 0 to the whole second)."""
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _share(row: dict, name: str) -> str:
    """A share column: the one run's, or the median of the repeated runs with their range."""
    runs = row.get(f"{name}_runs")
    if not runs:
        return fmt(row[f"{name}_fraction"], ".1%")
    return f"{np.median(runs):.1%} ({min(runs):.1%}-{max(runs):.1%})"


def table(rows: list[dict], command: str) -> str:
    lines = [
        "# Single-head extraction at scale (`--scale`)",
        "",
        f"`{command}` on {platform.machine()}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"numpy {np.__version__}; BLAS and torch single-threaded, the process niced, on a machine shared "
        "with other jobs (load varied during the run: compare ratios within a row, not seconds across rows).",
        "",
        f"Oracle: {ORACLE_TEXT['device' if 'device' in command else 'numpy']}. "
        "Full rank: `SingleHeadAttention.random(d)` (dense W). Low rank: `FactoredHead(d, r)` (scores from "
        "r x d projections, as a real head computes them). limit = 2rd - r^2 + d (+ d + 1 affine). "
        "error = max |W_hat - W| / max |W|. target s = seconds inside the target's calls; learner = "
        "(seconds - target s) / target s, i.e. everything outside the target (the Oracle's checks "
        "included); Oracle = the Oracle's own share of that. alone s = the target answering the limit's "
        "queries by itself in a tight batched loop (projected from a few batches): the physical limit. "
        "learner (CPU) = the same ratio in CPU time of the extracting thread (time.thread_time, inside and "
        "outside the target), which waiting for a core on a loaded machine does not inflate. "
        "peak MiB = tracemalloc peak of the extraction up to its return (numpy: learner, Oracle, the d x d "
        "result; not the benchmark's error check after it, whose two d x d temporaries tables before "
        "2026-12-08 counted, 3x the result from d = 2048 on), measured "
        "in a second, untimed run of each case that took at most --memory-seconds (tracemalloc slows "
        "every allocation, which inflated the learner fraction of earlier tables); — where not measured. "
        "Cases with under --repeat-below seconds of target time are run --repeats times in a row; their "
        "shares are the median (range) of those runs, the first one the case's first in the process, "
        "and their other columns are the first run's.",
        "",
        "| d | r | affine | queries / limit | error W | seconds | target s | alone s | learner | learner (CPU) | Oracle | peak MiB |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = f"{row['queries']}/{row['limit']}"
        if row["partial"]:
            ratio += f" (prefix {row['queries'] / row['limit']:.0%})"
            secs = f"{row['seconds']:.0f} -> ~{row['projected_seconds']:.0f} (extrapolated)"
            target = f"{row['target_s']:.0f} -> ~{row['projected_target_s']:.0f}"
        else:
            ratio += f" = {row['queries'] / row['limit']:.3f}"
            secs, target = f"{row['seconds']:.1f}", f"{row['target_s']:.1f}"
        lines.append(
            f"| {row['d']} | {row['r']} | {'yes' if row['affine'] else 'no'} | {ratio} | {fmt(row['error'], '.1e')} | "
            f"{secs} | {target} | {_seconds(row['target_alone_s'])} | {_share(row, 'learner')} | "
            f"{_share(row, 'learner_cpu')} | {_share(row, 'oracle')} | {fmt(row['peak_mib'], '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def scale_main(args) -> None:
    cases = CASES
    if args.only:
        wanted = {name.strip() for name in args.only.split(",")}
        cases = [
            c
            for c in CASES
            if f"{c[0]}/{'full' if c[1] is None else c[1]}{'/affine' if c[2] else ''}" in wanted
        ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{args.out}.json"
    rows = []
    command = (
        f"nice -n 10 python benchmarks/single_head.py --scale --case-seconds {args.case_seconds:g} "
        f"--prefix-seconds {args.prefix_seconds:g} --oracle {args.oracle}"
        + (f" --only {args.only}" if args.only else "")
        + (f" --out {args.out}" if args.out != "single_head_scale" else "")
        + (f" --memory-seconds {args.memory_seconds:g}" if args.memory_seconds != 60 else "")
        + (f" --repeats {args.repeats}" if args.repeats != 5 else "")
        + (f" --repeat-below {args.repeat_below:g}" if args.repeat_below != 5 else "")
    )
    warm_up()
    for d, r, affine in cases:
        row = run_case(
            d, r, affine, args.seed, args.case_seconds, args.prefix_seconds, args.oracle, False
        )
        if not row["partial"] and row["seconds"] <= args.memory_seconds:
            # tracemalloc slows every allocation (the learner's more than the target's): the peak
            # is measured in a second run of the case, not in the timed one
            row["peak_mib"] = run_case(
                d, r, affine, args.seed, args.case_seconds, args.prefix_seconds, args.oracle
            )["peak_mib"]
        if not row["partial"] and row["target_s"] < args.repeat_below and args.repeats > 1:
            # a sub-second case's share moves by a point or two between runs (what ran before,
            # where its buffers landed): it is run again and the spread reported, the median read
            runs = [row] + [
                run_case(
                    d,
                    r,
                    affine,
                    args.seed,
                    args.case_seconds,
                    args.prefix_seconds,
                    args.oracle,
                    False,
                )
                for _ in range(args.repeats - 1)
            ]
            for key in ("learner_fraction", "learner_cpu_fraction", "oracle_fraction"):
                row[key.replace("fraction", "runs")] = [run[key] for run in runs]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
        log.write_text(json.dumps({"command": command, "rows": rows}, indent=1))
        (RESULTS / f"{args.out}.md").write_text(table(rows, command))
    print(table(rows, command))


# Multi-head and FFN throughput (issue 16): their benchmark sizes (benchmarks/multihead.py random
# family and low-rank (128, 4, 16); benchmarks/ffn.py's d = 32, m = 64 and d = 64, m = 128, biases).
THROUGHPUT = [
    ("multi_head", {"d": 16, "heads": 4}),
    ("multi_head", {"d": 128, "heads": 4, "rank": 16}),
    ("relu_ffn", {"d": 32, "m": 64}),
    ("relu_ffn", {"d": 64, "m": 128}),
]


def throughput_case(kind: str, size: dict, seed: int) -> dict:
    """One extraction with the target timed: seconds per query, split learner vs target."""
    from attnlab.extract import multi_head, relu_ffn
    from attnlab.models import MultiHeadRegressor, ReluFFN

    d = size["d"]
    if kind == "multi_head":
        model = MultiHeadRegressor.random(d, size["heads"], rank=size.get("rank"), seed=seed)
        timed = TimedTarget(model)
        oracle = Oracle(timed, d=d)
        options = {"rank": size["rank"]} if "rank" in size else {}
        result = multi_head(oracle, heads=size["heads"], seed=seed, fidelity_samples=0, **options)
    else:
        model = ReluFFN.random(d, size["m"], bias=True, seed=seed)
        timed = TimedTarget(model)
        oracle = Oracle(timed, d=d)
        result = relu_ffn(oracle, bias=True, hidden=size["m"], seed=seed + 1, fidelity_samples=0)
    seconds, queries = result.seconds, result.queries
    return {
        "extractor": kind,
        "size": ", ".join(f"{k}={v}" for k, v in size.items()),
        "queries": queries,
        "seconds": seconds,
        "target_s": timed.seconds,
        "target_calls": timed.calls,
        "us_per_query": 1e6 * seconds / queries,
        "target_us_per_query": 1e6 * timed.seconds / queries,
        "learner_fraction": (seconds - timed.seconds) / timed.seconds,
    }


def throughput_main(args) -> None:
    command = "nice -n 10 python benchmarks/single_head.py --throughput"
    rows = [throughput_case(kind, size, args.seed) for kind, size in THROUGHPUT]
    lines = [
        "# Multi-head and ReLU-FFN throughput: learner vs target",
        "",
        f"`{command}` on {platform.machine()}, Python {platform.python_version()}, torch "
        f"{torch.__version__}, numpy {np.__version__}; BLAS and torch single-threaded, niced, on a "
        "shared machine (compare the split within a row). The numpy `Oracle` around a `TimedTarget`; "
        "target = seconds inside the target's calls, learner = (seconds - target) / target (the "
        "Oracle's checks included). Fidelity checks off.",
        "",
        "| extractor | size | queries | seconds | us / query | target us / query | target calls | learner |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        print(json.dumps(row), file=sys.stderr, flush=True)
        lines.append(
            f"| {row['extractor']} | {row['size']} | {row['queries']} | {row['seconds']:.2f} | "
            f"{row['us_per_query']:.1f} | {row['target_us_per_query']:.1f} | {row['target_calls']} | "
            f"{row['learner_fraction']:.0%} |"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "single_head_throughput.md").write_text(text)
    (RESULTS / "single_head_throughput.json").write_text(
        json.dumps({"command": command, "rows": rows}, indent=1)
    )
    print(text)


def before_after(before_path: Path, after_path: Path) -> str:
    """A markdown table of two scale runs' learner fractions, case by case (for the results file)."""
    runs = [json.loads(Path(p).read_text()) for p in (before_path, after_path)]

    def key(row: dict) -> tuple:
        return row["d"], row["r"], row["affine"]

    before = {key(row): row for row in runs[0]["rows"]}
    lines = [
        "## Learner fraction before / after (two runs, each under its own machine load)",
        "",
        f"before: `{runs[0]['command']}` at the previous code ({before_path.name}); "
        f"after: the table above.",
        "",
        "| d | r | affine | learner before | learner after | Oracle before | Oracle after |",
        "|---:|---:|---|---:|---:|---:|---:|",
    ]
    for row in runs[1]["rows"]:
        old = before.get(key(row))
        if old is None:
            continue
        lines.append(
            f"| {row['d']} | {row['r']} | {'yes' if row['affine'] else 'no'} | "
            f"{old['learner_fraction']:.1%} | {row['learner_fraction']:.1%} | "
            f"{fmt(old['oracle_fraction'], '.1%')} | {fmt(row['oracle_fraction'], '.1%')} |"
        )
    return "\n".join(lines) + "\n"


class ClockedModule(torch.nn.Module):
    """A module that adds up the wall and thread-CPU seconds of its own forward calls (so that any
    version of the Oracle can be timed the same way, for a before/after split)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    @property
    def d(self) -> int:
        return self.inner.d

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            return self.inner(X)
        finally:
            self.seconds += time.perf_counter() - started
            self.cpu_seconds += time.thread_time() - cpu


def warm_up() -> None:
    """One small, untimed extraction, so that the process's one-time costs (torch's and numpy's
    first calls, the allocator's first 16 MiB query buffer and its page faults) are not charged
    to whichever case comes first: they do not grow with d or r (ad hoc, 512 x 64: 14.2% learner
    in a process's first extraction, 9.0-10.8% in the next three)."""
    head, _ = build(64, 8, False, 1)
    single_head(DeviceOracle(DeviceTarget(head, "cpu"), d=64), rank=8, seed=1, fidelity_samples=0)


def learner_split(cases: str, seed: int = 0, chunk_mib: float | None = None) -> list[dict]:
    """For each case "DxR" (R an int or "full"): one extraction through DeviceOracle(cpu), no
    tracemalloc, and the learner's share of wall and thread-CPU time next to the target's.
    `chunk_mib`: the reader's chunk in MiB of queries (default: the reader's own, 16 MiB)."""
    rows = []
    warm_up()
    for case in cases.split(","):
        d_text, r_text = case.split("x")
        d, r = int(d_text), None if r_text == "full" else int(r_text)
        head, W = build(d, r, False, seed)
        clocked = ClockedModule(head)
        oracle = DeviceOracle(DeviceTarget(clocked, "cpu"), d=d)
        options = {} if chunk_mib is None else {"chunk": max(1, int(chunk_mib * 2**20) // (16 * d))}
        started, cpu = time.perf_counter(), time.thread_time()
        result = single_head(
            oracle, rank=r, seed=seed, fidelity_samples=0, method_options=options or None
        )
        wall, cpu = time.perf_counter() - started, time.thread_time() - cpu
        rows.append(
            {
                "case": case,
                "chunk_mib": chunk_mib,
                "queries": result.queries,
                "error": float(np.max(np.abs(result.W - W)) / np.max(np.abs(W))),
                "learner_wall": (wall - clocked.seconds) / clocked.seconds,
                "learner_cpu": (cpu - clocked.cpu_seconds) / clocked.cpu_seconds,
                "target_cpu_s": clocked.cpu_seconds,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--split":
        # OMP_NUM_THREADS=1 PYTHONPATH=<a checkout>/src python benchmarks/single_head_scale.py
        #   --split 512x64,1024x64,2048x64,512xfull [--chunk-mib 8]
        torch.set_num_threads(1)
        chunk_mib = float(sys.argv[4]) if sys.argv[3:4] == ["--chunk-mib"] else None
        learner_split(sys.argv[2], chunk_mib=chunk_mib)
    else:  # python benchmarks/single_head_scale.py BEFORE.json AFTER.json
        print(before_after(Path(sys.argv[1]), Path(sys.argv[2])))
