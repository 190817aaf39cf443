"""Fault injection against the Oracle and its query journal: what is lost, what is paid twice.

Every fault runs in real subprocesses on this machine (no network; the served rows contributed by
`reliability_serve.py` use 127.0.0.1 only), each bounded by a timeout, and the whole run stops by
itself. Rows:

- kill -9 of a `single_head` extraction under a journal, in the middle of a target call (after
  the target computed its answers, before the Oracle could record them), then a resumed run on
  the same journal; once with the default journal_chunk and once unchunked (the old behaviour);
- a tampered journal (one answer changed by an SQL UPDATE; one +inf written with a valid
  checksum): is it detected on replay, and what does the detection cost;
- two processes on one journal, started together: the second must be refused, not pay twice;
- duplicates in one batch: 1,000 sequences of which 100 are distinct.

"queries lost" counts sequences the target was paid for whose answers are gone (neither delivered
nor journaled); "queries paid twice" counts sequences paid again on resume, the journal's probe
queries (3 per opening) included and named in the detail column. A second table measures what
chunked journaling costs in throughput.

Served rows: if `benchmarks/reliability_serve.py` exists it must define
`server_rows(quick: bool) -> list[dict]`, each dict keyed by COLUMNS (values printable; "n/a"
where a column does not apply), bounded in time by itself.

    python benchmarks/reliability.py [--quick]

Writes benchmarks/results/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from attnlab import Oracle
from attnlab.models import SingleHeadAttention
from attnlab.oracle.oracle import JOURNAL_CHUNK

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
COLUMNS = [
    "fault",
    "queries lost",
    "queries paid twice",
    "server memory peak",
    "legitimate-client latency p99",
    "detail",
]
PROBES = 3  # Oracle's default journal_probes
ENV = dict(
    os.environ, PYTHONPATH=os.pathsep.join(sys.path), OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1"
)

# One extraction, run by a child process: single_head on a fixed head, through a counting target
# that can SIGKILL its own process at a given call, after computing the answers.
EXTRACTION = textwrap.dedent("""
    import json, os, signal, sys
    import numpy as np, torch
    from attnlab import Oracle
    from attnlab.extract import single_head
    from attnlab.models import SingleHeadAttention
    d, journal, chunk, kill_at, ledger = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    head = SingleHeadAttention.random(d, seed=0)
    sent = []
    def target(X):
        with torch.no_grad():
            y = head(torch.as_tensor(X)).numpy()
        sent.append(X.shape[0])
        with open(ledger, "a") as f:  # what the target was paid for, written before it answers
            f.write(f"{X.shape[0]}\\n")
        if len(sent) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if os.environ.get("RELIABILITY_SLOW"):
            import time; time.sleep(0.002 * X.shape[0])
        return y
    try:
        oracle = Oracle(target, d=d, journal=journal, journal_chunk=chunk)
        result = single_head(oracle, seed=0, fidelity_samples=0)
    except Exception as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc)}), flush=True)
        sys.exit(3)
    W_err = float(np.linalg.norm(result.W - head.W.detach().numpy()))
    print(json.dumps({"paid": oracle.paid, "queries": oracle.queries, "W_err": W_err}), flush=True)
""")


def run_extraction(
    d: int, journal: Path, chunk: int, kill_at: int = 0, timeout: float = 300.0, slow: bool = False
) -> tuple[int, dict | None, list[int]]:
    """(return code, the child's JSON line or None, the size of every call its target was paid for)."""
    import json

    ledger = journal.with_suffix(f".ledger{time.monotonic_ns()}")
    env = dict(ENV, RELIABILITY_SLOW="1") if slow else ENV
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            EXTRACTION,
            str(d),
            str(journal),
            str(chunk),
            str(kill_at),
            str(ledger),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    sent = [int(line) for line in ledger.read_text().split()] if ledger.exists() else []
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode not in (0, 3, -signal.SIGKILL):
        raise RuntimeError(
            f"the extraction child failed unexpectedly (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return proc.returncode, (json.loads(lines[-1]) if lines else None), sent


def kill_and_resume_row(tmp: Path, d: int, chunk: int, label: str) -> dict:
    """Kill the extraction during its largest target call (unchunked) or its middle one (chunked)."""
    rc, clean, calls = run_extraction(d, tmp / f"clean-{chunk}.sqlite", chunk)
    assert rc == 0 and clean is not None, clean
    clean_sent = sum(calls)
    kill_at = 1 + (int(np.argmax(calls)) if chunk >= 10**9 else len(calls) // 2)
    journal = tmp / f"killed-{chunk}.sqlite"
    rc, _, calls_before = run_extraction(d, journal, chunk, kill_at=kill_at)
    assert rc == -signal.SIGKILL, f"the child was not killed (rc {rc})"
    sent_before = sum(calls_before)
    with sqlite3.connect(journal) as db:
        journaled = db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    lost = sent_before - PROBES - journaled
    rc, resumed, calls_after = run_extraction(d, journal, chunk)
    assert rc == 0 and resumed is not None, resumed
    sent_after = sum(calls_after)
    paid_twice = sent_before + sent_after - clean_sent
    return {
        "fault": label,
        "queries lost": lost,
        "queries paid twice": paid_twice,
        "detail": f"single_head d={d}: {clean_sent} paid in a clean run; killed in call {kill_at} "
        f"({calls_before[-1]} sequences) after {sent_before} sent, "
        f"{journaled} journaled; resume paid {sent_after} ({PROBES} probes), "
        f"W error {resumed['W_err']:.1e}",
    }


def tamper_rows(tmp: Path, d: int) -> list[dict]:
    rows = []
    for how in ("update", "inf"):
        journal = tmp / f"tampered-{how}.sqlite"
        rc, clean, _ = run_extraction(d, journal, JOURNAL_CHUNK)
        assert rc == 0
        with sqlite3.connect(journal) as db:
            if how == "update":
                db.execute("UPDATE answers SET answer = answer * 1.001 WHERE rowid = 7")
            else:
                from attnlab.oracle.journal import row_checksum

                key, n, dd, q = db.execute(
                    "SELECT key, n, d, query FROM answers WHERE rowid = 7"
                ).fetchone()
                db.execute(
                    "UPDATE answers SET answer = ?, checksum = ? WHERE rowid = 7",
                    (float("inf"), row_checksum(key, n, dd, q, float("inf"))),
                )
        rc, out, calls = run_extraction(d, journal, JOURNAL_CHUNK)
        sent = sum(calls)
        detected = rc == 3 and out is not None and out.get("error") == "JournalError"
        what = (
            "one answer changed by UPDATE" if how == "update" else "+inf with a recomputed checksum"
        )
        rows.append(
            {
                "fault": f"tampered journal ({what})",
                "queries lost": 0,
                "queries paid twice": sent,
                "detail": f"detected: {'yes' if detected else 'NO'}"
                + (f" ({out['message'][:90]}...)" if detected else "")
                + f"; {sent} sent before detection (the probes)",
            }
        )
    return rows


def two_processes_row(tmp: Path, d: int) -> dict:
    import json

    journal = tmp / "shared.sqlite"
    ledgers = [journal.with_suffix(f".ledger-{i}") for i in range(2)]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                EXTRACTION,
                str(d),
                str(journal),
                str(JOURNAL_CHUNK),
                "0",
                str(ledgers[i]),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(ENV, RELIABILITY_SLOW="1"),
        )
        for i in range(2)
    ]
    outs = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=300)
        lines = [line for line in stdout.splitlines() if line.startswith("{")]
        outs.append((proc.returncode, json.loads(lines[-1]) if lines else {"error": stderr[-300:]}))
    sent = [sum(int(x) for x in p.read_text().split()) if p.exists() else 0 for p in ledgers]
    refused = [i for i, (rc, out) in enumerate(outs) if out.get("error") == "JournalError"]
    finished = [i for i, (rc, out) in enumerate(outs) if rc == 0]
    rc, again, calls_again = run_extraction(
        d, journal, JOURNAL_CHUNK
    )  # the refused one, re-run afterwards
    assert rc == 0
    _, clean, clean_calls = run_extraction(d, tmp / "shared-clean.sqlite", JOURNAL_CHUNK)
    sent_again, clean_sent = sum(calls_again), sum(clean_calls)
    paid_twice = sum(sent) + sent_again - clean_sent
    return {
        "fault": "two processes started together on one journal",
        "queries lost": 0,
        "queries paid twice": paid_twice,
        "detail": f"{len(finished)} finished, {len(refused)} refused with JournalError (sent {[sent[i] for i in refused]}); "
        f"re-run after the first finished paid {sent_again} ({PROBES} probes)",
    }


def duplicates_row() -> dict:
    head = SingleHeadAttention.random(8, seed=0)
    base = np.random.default_rng(0).standard_normal((100, 16, 8))
    batch = base[np.random.default_rng(1).integers(0, 100, size=1000)]
    distinct = np.unique(batch.reshape(1000, -1), axis=0).shape[0]
    oracle = Oracle(head)
    out = oracle(batch)
    with torch.no_grad():
        exact = head(torch.as_tensor(batch)).numpy()
    assert np.array_equal(out, exact)
    return {
        "fault": "duplicates in one batch (1,000 sequences, 100 distinct)",
        "queries lost": 0,
        "queries paid twice": oracle.paid - distinct,
        "detail": f"queries {oracle.queries}, paid {oracle.paid}; answers equal the target's",
    }


def chunk_cost_table(quick: bool) -> list[dict]:
    """Time per query by journal_chunk; repetitions interleaved so that machine load hits all alike."""
    head = SingleHeadAttention.random(8, seed=0)
    B = 1024 if quick else 4096
    X = np.random.default_rng(0).standard_normal((B, 16, 8))
    chunks = (None, 1, 8, 64, 256, B)
    best = dict.fromkeys(chunks, float("inf"))
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(5):
            for chunk in chunks:
                kwargs = (
                    {}
                    if chunk is None
                    else {"journal": Path(tmp) / f"c{chunk}-{rep}.sqlite", "journal_chunk": chunk}
                )
                with Oracle(head, **kwargs) as oracle:
                    oracle(X[:1])  # opens and binds the journal outside the timing
                    start = time.perf_counter()
                    oracle(X[1:])
                    best[chunk] = min(best[chunk], time.perf_counter() - start)
    return [
        {
            "journal_chunk": "no journal" if chunk is None else chunk,
            "us per query": f"{best[chunk] * 1e6 / (B - 1):.1f}",
            "re-paid on kill -9 (at most)": "n/a" if chunk is None else chunk,
        }
        for chunk in chunks
    ]


def markdown(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "n/a")) for c in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="smaller extraction (d = 12 instead of 24)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    d = 12 if args.quick else 24
    started = time.monotonic()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rows.append(
            kill_and_resume_row(
                tmp,
                d,
                JOURNAL_CHUNK,
                label=f"kill -9 of an extraction under a journal (journal_chunk={JOURNAL_CHUNK})",
            )
        )
        rows.append(
            kill_and_resume_row(
                tmp,
                d,
                10**9,
                label="kill -9 of an extraction under an unchunked journal (the old behaviour)",
            )
        )
        rows.extend(tamper_rows(tmp, d))
        rows.append(two_processes_row(tmp, d))
    rows.append(duplicates_row())
    for row in rows:
        row.setdefault("server memory peak", "n/a")
        row.setdefault("legitimate-client latency p99", "n/a")
    served_note = "benchmarks/reliability_serve.py not present: no served rows."
    if (HERE / "reliability_serve.py").exists():
        sys.path.insert(0, str(HERE))
        from reliability_serve import server_rows

        rows.extend(server_rows(quick=args.quick))
        served_note = "Served rows from benchmarks/reliability_serve.py (loopback)."
    costs = chunk_cost_table(args.quick)
    elapsed = time.monotonic() - started
    table = markdown(rows, COLUMNS)
    cost_table = markdown(costs, ["journal_chunk", "us per query", "re-paid on kill -9 (at most)"])
    text = (
        f"# Reliability under injected faults\n\n"
        f"Command: `python benchmarks/reliability.py{' --quick' if args.quick else ''}` "
        f"({elapsed:.0f} s; {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}). {served_note}\n\n{table}\n\n"
        f'"queries paid twice" includes the {PROBES} probe queries each reopening of a journal asks.\n\n'
        f"## What chunked journaling costs\n\nA d = 8 single head, 16-token sequences, one batch, best of 5 interleaved runs on a shared machine; "
        f"each chunk is committed to the journal before the next is sent.\n\n{cost_table}\n"
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reliability.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
