"""The least learner time any extraction with attnlab's probe design can have, beside the target's.

`single_head` reads W through two-token probes [mu a + nu b; nu b]. Whatever the code around
them, every query needs (1) its dense tokens written into the query buffer and (2) the Oracle's
one pass over it (`checks.row_hashes`, which proves it finite and hashes it) and the sort that
groups duplicates. This benchmark times only that, in the cheapest layout there is (each slot
keeps its line's constant rows across chunks, so only what must change is written), in chunks
of the reader's default size, and the target's forward on the same buffers:

- column reads (low rank, d r queries): a = e_i + s (shifted coordinates) varies per query, but
  the first token mu s + nu q and the second nu q are kept rows: one entry moves;
- row reads (low rank, r (d - r) queries): a_p and the zero row kept; two entries move;
- full rank (d^2 queries): a varies per query, b = nu e_j (one entry).

`floor` = (writes + Oracle pass) / target time. The Oracle pass timed here is what a plain batch
costs; the reader now hands the Oracle a `QueryPad` batch (oracle/pad.py), whose hashes are kept as
entries move, so the reader itself can go below this floor at low rank. Measured with one thread, under whatever load the
machine has (say so beside the figures). Usage:

    OMP_NUM_THREADS=1 nice -n 10 python benchmarks/single_head_floor.py 512x64,512x128,2048x64
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from single_head_scale import build  # noqa: E402

from attnlab.extract.single_head.reader import default_chunk  # noqa: E402
from attnlab.oracle.checks import row_hashes  # noqa: E402


@contextmanager
def _timed(seconds: dict[str, float], key: str):
    started = time.thread_time()
    yield
    seconds[key] += time.thread_time() - started


def floor_case(d: int, r: int | None, repeats: int = 2) -> dict:
    """Thread-CPU seconds of the probe writes, the Oracle's pass and the target, per read kind."""
    head, _ = build(d, r, False, 0)
    chunk = default_chunk(d)
    rng = np.random.default_rng(0)
    basis = torch.from_numpy(rng.standard_normal((2, d)))
    coef = torch.from_numpy(rng.standard_normal((d, 2)))
    kinds = (
        {"full": d * d}
        if r is None
        else {"columns": d * r, "rows": r * (d - r)}  # the value read (d queries) is left out
    )
    best: dict[str, dict[str, float]] = {}
    for _ in range(repeats):
        buffer = torch.from_numpy(rng.standard_normal((chunk, 2, d)) * 0.1)
        X0, host = buffer[:, 0], buffer.numpy()
        for kind, total in kinds.items():
            seconds = {"learner": 0.0, "target": 0.0}
            for first in range(0, total, chunk):
                n = min(chunk, total - first)
                index = np.arange(first, first + n) % d
                slots = np.arange(n)
                with _timed(seconds, "learner"):
                    if kind == "rows":
                        _row_entries(host, slots, index)
                    elif kind == "columns":
                        host[slots, 0, index] += 0.5  # the one entry mu e_i on the kept row
                    else:
                        _dense_first(X0[:n], coef, basis, index, host, slots)
                    np.argsort(row_hashes(host[:n]))
                with _timed(seconds, "target"), torch.no_grad():
                    head(buffer[:n])
            kept = best.get(kind)
            if kept is None or seconds["learner"] / seconds["target"] < kept["floor"]:
                best[kind] = {
                    **seconds,
                    "floor": seconds["learner"] / seconds["target"],
                    "queries": total,
                }
    learner = sum(v["learner"] for v in best.values())
    target = sum(v["target"] for v in best.values())
    return {
        "case": f"{d}x{'full' if r is None else r}",
        "chunk": chunk,
        "kinds": best,
        "floor": learner / target,
        "target_us_per_query": 1e6 * target / sum(v["queries"] for v in best.values()),
    }


def _row_entries(host: np.ndarray, slots: np.ndarray, cols: np.ndarray) -> None:
    """A row read's write when the slot already holds mu a_p and the zero row: two entries."""
    host[slots, 0, cols] += 0.5
    host[slots, 1, cols] = 0.5


def _dense_first(out, coef, basis, index, host, slots) -> None:
    """A full-rank read's mu a_i (a rank-2 product written into the buffer, and its diagonal)
    beside b = nu e_j (one entry)."""
    torch.mm(coef[torch.from_numpy(index)] * -2.0, basis, out=out)
    host[slots, 1, index] = 0.5
    host[slots, 0, index] += 1.0


def main(cases: str) -> None:
    torch.set_num_threads(1)
    print(
        "| case | chunk (queries) | target us/query | floor: columns | floor: rows | floor: full | floor, whole read |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for case in cases.split(","):
        d_text, r_text = case.split("x")
        row = floor_case(int(d_text), None if r_text == "full" else int(r_text))
        part = {k: f"{v['floor']:.1%}" for k, v in row["kinds"].items()}
        print(
            f"| {row['case']} | {row['chunk']} | {row['target_us_per_query']:.2f} | "
            f"{part.get('columns', '-')} | {part.get('rows', '-')} | {part.get('full', '-')} | "
            f"{row['floor']:.1%} |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "512x64,512x128,1024x64,2048x64,512xfull")
