"""Single-head extraction: queries against the information limit, accuracy, time, side by side.

    python benchmarks/single_head.py [--quick]
    nice -n 10 python benchmarks/single_head.py --scale       # Llama-size heads (single_head_scale.py)
    nice -n 10 python benchmarks/single_head.py --precision   # float32/float16 heads

Writes benchmarks/results/single_head.md (and .png: nuclear-norm success rate against C).
Three tables, all from this one run:
1. adaptive / paper / nuclear-norm on random heads (W entries ~ N(0, 1), rank r or full):
   queries, the information limit (free parameters 2rd - r^2 + d), their ratio, max-entry
   relative error of W, seconds, and the learner's own time as a fraction of the time the target
   spends answering (timed inside a wrapper around the target).
2. the smallest C (measurements = C * r * 2d) at which nuclear-norm recovery succeeds
   (relative error <= 1e-6) in at least 19 of 20 trials at d = 40, r = 2.
BLAS and torch run single-threaded so timings are comparable on a shared machine.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from attnlab import ExtractionError, Oracle  # noqa: E402
from attnlab.evaluate import relative_error  # noqa: E402
from attnlab.extract import single_head  # noqa: E402
from attnlab.models import SingleHeadAttention  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


class TimedTarget:
    """The target as a numpy callable that accumulates the seconds spent answering."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.seconds = 0.0

    def __call__(self, X: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        with torch.no_grad():
            out = self.module(torch.as_tensor(X)).numpy()
        self.seconds += time.perf_counter() - start
        return out


class TimedOracle(Oracle):
    """An Oracle that also accumulates the seconds spent inside its calls (its checks + the target)."""

    seconds = 0.0

    def __call__(self, X):
        start = time.perf_counter()
        try:
            return super().__call__(X)
        finally:
            self.seconds += time.perf_counter() - start


def information_limit(d: int, r: int | None) -> int:
    r = d if r is None else r
    return 2 * r * d - r * r + d


def run_case(d: int, r: int | None, method: str, seed: int) -> dict:
    head = SingleHeadAttention.random(d, rank=r, scale=1.0, seed=seed)
    target = TimedTarget(head)
    oracle = TimedOracle(target, d=d)
    row = {
        "d": d,
        "r": "full" if r is None else r,
        "method": method,
        "limit": information_limit(d, r),
    }
    start = time.perf_counter()
    try:
        result = single_head(oracle, rank=r, method=method, seed=seed, fidelity_samples=0)
    except ExtractionError as exc:
        row.update(
            queries=oracle.queries,
            ratio=oracle.queries / row["limit"],
            error=None,
            seconds=time.perf_counter() - start,
            learner=None,
            overhead=None,
            note=str(exc).split(":")[0],
        )
        return row
    learner = result.seconds - oracle.seconds
    row.update(
        queries=result.queries,
        ratio=result.queries / row["limit"],
        error=relative_error(result.W, head.W.detach().numpy()),
        seconds=result.seconds,
        target=target.seconds,
        learner=learner / target.seconds,
        overhead=(oracle.seconds - target.seconds) / target.seconds,
        note=f"max logit {result.info.get('max_abs_logit', 0):.1f}",
    )
    return row


def threshold_study(d: int, r: int, grid: list[float], trials: int, seed: int) -> list[dict]:
    rows = []
    for C in tqdm(grid, desc="nuclear-norm C", file=sys.stderr, disable=not sys.stderr.isatty()):
        measurements = math.ceil(C * r * 2 * d)
        successes, seconds = 0, []
        for trial in range(trials):
            head = SingleHeadAttention.random(d, rank=r, scale=1.0, seed=seed + trial)
            oracle = Oracle(head, d=d)
            result = single_head(
                oracle,
                rank=r,
                method="nuclear-norm",
                seed=seed + trial,
                method_options={"measurements": measurements},
                fidelity_samples=0,
            )
            successes += relative_error(result.W, head.W.detach().numpy()) <= 1e-6
            seconds.append(result.seconds)
        rows.append(
            {
                "C": C,
                "measurements": measurements,
                "successes": successes,
                "trials": trials,
                "median_seconds": float(np.median(seconds)),
            }
        )
    return rows


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--scale",
        action="store_true",
        help="the scale table: d in {512, 1024, 2048, 4096}, r in {64, 128}, full rank to 2048",
    )
    parser.add_argument(
        "--precision",
        action="store_true",
        help="float32/float16 heads: error reached and queries spent",
    )
    parser.add_argument(
        "--case-seconds",
        type=float,
        default=400.0,
        help="--scale: run a case to the end when its target time is projected below this; "
        "else run a prefix and extrapolate (labelled)",
    )
    parser.add_argument(
        "--prefix-seconds",
        type=float,
        default=120.0,
        help="--scale: target seconds a prefix run spends",
    )
    parser.add_argument(
        "--oracle",
        choices=("device", "numpy"),
        default="device",
        help="--scale: DeviceOracle on the CPU (torch fast path) or the numpy Oracle",
    )
    parser.add_argument(
        "--only", default=None, help="--scale: comma-separated case names (e.g. 2048/full)"
    )
    parser.add_argument(
        "--out",
        default="single_head_scale",
        help="--scale: results file name (benchmarks/results/OUT.md and .json)",
    )
    parser.add_argument(
        "--memory-seconds",
        type=float,
        default=60.0,
        help="--scale: measure the peak memory (tracemalloc) in a second run of cases up to this long",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="--scale: runs of each case under --repeat-below s of target time (median reported)",
    )
    parser.add_argument(
        "--repeat-below",
        type=float,
        default=5.0,
        help="--scale: target seconds below which a case is repeated",
    )
    parser.add_argument(
        "--throughput",
        action="store_true",
        help="multi_head and relu_ffn at their benchmark sizes: seconds per query, learner vs target",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.throughput:
        from single_head_scale import throughput_main

        return throughput_main(args)
    if args.scale:
        from single_head_scale import scale_main

        return scale_main(args)
    if args.precision:
        from single_head_precision import precision_main

        return precision_main(args)

    dims = [16, 64] if args.quick else [16, 64, 256, 512]
    ranks = [None, 4] if args.quick else [None, 4, 16]
    grid = [1.25, 1.5, 2.0] if args.quick else [1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0]
    trials = 5 if args.quick else 20

    cases = []
    for d in dims:
        for r in ranks:
            if r is not None and r >= d:
                continue
            for method in ("adaptive", "paper", "nuclear-norm"):
                if method == "nuclear-norm" and d > 64:
                    continue
                cases.append((d, r, method))
    rows = [
        run_case(d, r, method, args.seed)
        for d, r, method in tqdm(
            cases, desc="extractions", file=sys.stderr, disable=not sys.stderr.isatty()
        )
    ]
    study = threshold_study(40, 2, grid, trials, args.seed + 1000)

    lines = [
        "# Single-head extraction benchmark" + (" (--quick)" if args.quick else ""),
        "",
        f"`python benchmarks/single_head.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}; BLAS and "
        "torch single-threaded. Targets: `SingleHeadAttention.random(d, rank=r, scale=1, seed=0)`; "
        "the extractor is told the rank (`rank=r`, or `None` for full).",
        "",
        "## Queries against the information limit",
        "",
        "limit = free parameters 2rd - r^2 + d (d^2 + d at full rank). error = max |W_hat - W| / max |W|. "
        "learner/target = (extraction seconds - seconds inside Oracle calls) / seconds inside the target; "
        "Oracle/target = the Oracle's own checks and copies per second of target time (not the learner's).",
        "",
        "| d | r | method | queries | limit | queries/limit | error W | seconds | learner/target | Oracle/target | note |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['d']} | {row['r']} | {row['method']} | {row['queries']} | {row['limit']} | "
            f"{row['ratio']:.3f} | {fmt(row['error'], '.1e')} | {row['seconds']:.2f} | "
            f"{fmt(row['learner'], '.1%')} | {fmt(row['overhead'], '.1%')} | {row['note']} |"
        )
    passing = [s["C"] for s in study if s["successes"] >= math.ceil(0.95 * s["trials"])]
    lines += [
        "",
        f"## Nuclear-norm: measurements needed (d = 40, r = 2, {trials} trials per C)",
        "",
        "measurements = C * r * 2d; success = relative error <= 1e-6. Free parameters: "
        f"{information_limit(40, 2) - 40} for W (plus d = 40 value queries, not counted in C).",
        "",
        "| C | measurements | successes | median seconds |",
        "|---:|---:|---:|---:|",
    ]
    for s in study:
        lines.append(
            f"| {s['C']} | {s['measurements']} | {s['successes']}/{s['trials']} | {s['median_seconds']:.2f} |"
        )
    lines += [
        "",
        f"Smallest C with >= 95% success: **{min(passing) if passing else 'none in grid'}**.",
        "",
    ]
    text = "\n".join(lines)
    print(text)

    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "single_head_quick" if args.quick else "single_head"
    (RESULTS / f"{stem}.md").write_text(text)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([s["C"] for s in study], [s["successes"] / s["trials"] for s in study], "o-")
    ax.axhline(0.95, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("C  (measurements = C r 2d)")
    ax.set_ylabel("success rate (rel. error <= 1e-6)")
    ax.set_title("nuclear-norm recovery, d = 40, r = 2")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{stem}.png", dpi=120)


if __name__ == "__main__":
    main()
