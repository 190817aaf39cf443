"""Training speed per architecture on CPU, and (from a results store) the sample-complexity answer.

    python benchmarks/training.py [--quick]
    attnlab sweep qsa-default --store S && python benchmarks/training.py --store S [--store S2 ...]
    python benchmarks/training.py --grid STORE --runs-dir RUNS [--load-log LOG]  # training-grid.md
    python benchmarks/training.py --compile-check                # does torch.compile pay on CPU?

Part 1 times the same number of optimiser steps (batch 64, one torch thread, as sweep workers run;
CPU time, since wall time on a shared machine mostly measures the other jobs)
for every baseline on qSA, side by side in one process, and third-order vs pairwise attention on
Match3. Part 2 (with --store) summarises a sweep: best-of-lr errors per training-set size, the
samples each architecture needs to reach 1/(2q), the ratio to attention, and a figure.
Writes benchmarks/results/training.md (and training*.png figures with --store).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

from attnlab.experiments import ModelConfig, ResultStore, RunConfig, TaskConfig, TrainConfig, train
from attnlab.experiments.analysis import samples_to_threshold, summarise, width_to_threshold
from attnlab.experiments.plots import plot_error_vs_samples, plot_threshold_width

RESULTS = Path(__file__).resolve().parent / "results"

BASELINES = [
    ModelConfig(arch="attention", width=64),
    ModelConfig(arch="attention", width=64, heads=4),
    ModelConfig(arch="lstm", width=64),
    ModelConfig(arch="lstm", width=64, bidirectional=True),
    ModelConfig(arch="gru", width=64),
    ModelConfig(arch="gru", width=64, bidirectional=True),
    ModelConfig(arch="mlp", width=256),
]


def _third_order_available() -> bool:
    try:
        from attnlab.models.third_order import ThirdOrderAttention  # noqa: F401
    except ImportError:
        return False
    return True


def time_run(task: TaskConfig, model: ModelConfig, steps: int) -> dict:
    schedule = TrainConfig(
        n_train=64 * steps,
        n_val=64,
        n_test=64,
        batch_size=64,
        max_steps=steps,
        eval_every=steps,
        threads=1,
    )
    result = train(RunConfig(task=task, model=model, train=schedule, seed=0))
    t = result.timings
    # CPU time of the optimiser steps: on a shared machine wall time mostly measures the neighbours
    return {
        "params": result.metrics["n_params"],
        "cpu_s": t["cpu_seconds"],
        "wall_ms_per_step": 1000 * t["train_seconds"] / steps,
        "ms_per_step": 1000 * t["train_cpu_seconds"] / steps,
        "examples_per_s": steps * 64 / t["train_cpu_seconds"],
    }


def _label(model: ModelConfig) -> str:
    from attnlab.experiments.analysis import model_label

    return model_label(model.model_dump())


def speed_table(sizes: list[int], steps: int) -> list[str]:
    lines = [
        "| task | model | params | CPU ms/step | examples/s (CPU) | throughput vs attention H=1 | "
        "wall ms/step | run CPU s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for N in sizes:
        task = TaskConfig(name="qsa", params={"N": N, "q": 2, "d_prime": 4})
        rows = [(m, time_run(task, m, steps)) for m in BASELINES]
        reference = rows[0][1]["examples_per_s"]
        for model, row in rows:
            lines.append(
                f"| qsa N={N} q=2 | {_label(model)} | {row['params']} | {row['ms_per_step']:.2f} | "
                f"{row['examples_per_s']:,.0f} | {row['examples_per_s'] / reference:.2f} | {row['wall_ms_per_step']:.2f} | "
                f"{row['cpu_s']:.1f} |"
            )
        print(lines[-1], file=sys.stderr)
    return lines


def third_order_table(sizes: list[int], steps: int) -> list[str]:
    if not _third_order_available():
        return ["(third-order attention not available: attnlab.models.third_order is missing)"]
    lines = [
        "| task | model | params | CPU ms/step | examples/s (CPU) | cost vs pairwise |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for N in sizes:
        task = TaskConfig(name="match3", params={"N": N, "M": 31})
        pair = time_run(task, ModelConfig(arch="attention", width=16), steps)
        third = time_run(task, ModelConfig(arch="third_order", width=16), steps)
        for name, row in (("attention m=16 H=1", pair), ("third_order m=16 H=1", third)):
            lines.append(
                f"| match3 N={N} | {name} | {row['params']} | {row['ms_per_step']:.2f} | "
                f"{row['examples_per_s']:,.0f} | {row['ms_per_step'] / pair['ms_per_step']:.2f} |"
            )
    return lines


def _fmt(value) -> str:
    if value is None:
        return "not reached"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _varies(rows: list[dict], key: str) -> bool:
    seen: dict[str, set] = {}
    for r in rows:
        seen.setdefault(r["task"] + r["model"], set()).add(r[key])
    return any(len(v) > 1 for v in seen.values())


def sweep_sections(store_path: Path, sweep: str | None, figure: str) -> list[str]:
    """Summary tables of one store; figures `<figure>.png` (error vs samples, when the training-set
    size varies) and `training-width.png` (when widths vary)."""
    with ResultStore(store_path) as store:
        records = store.records(sweep)
        names = sweep or ", ".join(store.sweeps())
    rows = summarise(records)
    timed = [r["timings"]["cpu_seconds"] for r in records if "cpu_seconds" in r["timings"]]
    wall = sum(r["timings"]["wall_seconds"] for r in records)
    cpu = (
        f"{sum(timed):,.0f} s CPU over the {len(timed)} runs that recorded it"
        if timed
        else "CPU time not recorded"
    )
    lines = [
        f"## Sweep `{names}`: {len(records)} runs (`attnlab sweep {names} --store {store_path}`)",
        "",
        f"Sum over runs: {wall:,.0f} s wall (on a shared, loaded machine); {cpu}.",
        "",
        "Median over seeds of the test error of the run with the best validation loss over the lr grid.",
        "qSA: max = worst case over positions and test examples of ||f(X)_i - qSA(X)_i||_2 (the paper's",
        "eps-approximation on the test set), mean = its mean, threshold = 1/(2q). Match: max = fraction",
        "of test sequences with a wrong bit, and the bit error rate.",
        "",
        "| task | model | n_train | max error | mean error / bit error rate | threshold | reached |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        second = r.get("mean_error", r.get("bit_error_rate", float("nan")))
        lines.append(
            f"| {r['task']} | {r['model']} | {r['n_train']} | {r['max_error']:.3g} | {second:.3g} | "
            f"{r['threshold']:.3g} | {r['reached_fraction']:.2f} |"
        )
    if _varies(rows, "n_train"):
        lines += [
            "",
            "### Training examples needed to reach the threshold (worst-case error)",
            "",
            "| task | model | samples needed | largest tried | ratio to attention |",
            "|---|---|---:|---:|---:|",
        ]
        for e in samples_to_threshold(rows):
            lines.append(
                f"| {e['task']} | {e['model']} | {_fmt(e['samples_needed'])} | {e['largest_tried']} | "
                f"{_fmt(e['ratio_to_attention'])} |"
            )
        plot_error_vs_samples(rows, RESULTS / f"{figure}.png")
        lines += ["", f"![error vs training examples]({figure}.png)"]
    widths = [w for w in width_to_threshold(rows) if len(w["widths_tried"]) > 1]
    if widths:
        lines += [
            "",
            "### Smallest attention width reaching the threshold",
            "",
            "| task | heads | width needed | widths tried |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {w['task']} | {w['heads']} | {_fmt(w['width_needed'])} | {w['widths_tried']} |"
            for w in widths
        ]
        plot_threshold_width(widths, RESULTS / "training-width.png")
        lines += ["", "![threshold width vs q](training-width.png)"]
    return lines


def compile_check(steps: int = 300) -> str:
    """CPU ms per optimiser step of attention (N=32, q=2, m=32, batch 64), eager vs torch.compile."""
    import time

    import numpy as np

    from attnlab.experiments.models import build_model
    from attnlab.tasks import get_task

    task = get_task("qsa", N=32, q=2, d_prime=4)
    batch = task.sample(np.random.default_rng(0), 64)
    x = torch.as_tensor(task.tokens(batch), dtype=torch.float32)
    y = torch.as_tensor(batch.targets, dtype=torch.float32)

    def cpu_seconds(model, n):
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        start = time.process_time()
        for _ in range(n):
            loss = ((model(x) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        return time.process_time() - start

    config = ModelConfig(arch="attention", width=32, readout_hidden=32)
    torch.manual_seed(0)
    eager = cpu_seconds(build_model(config, 32, task.token_dim, 4), steps)
    torch.manual_seed(0)
    compiled_model = torch.compile(build_model(config, 32, task.token_dim, 4))
    first = cpu_seconds(compiled_model, 1)
    compiled = cpu_seconds(compiled_model, steps)
    return (
        f"attention m=32 on qsa N=32 q=2, batch 64, one thread: eager {1000 * eager / steps:.2f} ms/step; "
        f"torch.compile {1000 * compiled / steps:.2f} ms/step after a first (compiling) step of {first:.1f} s CPU "
        f"(this process only; inductor's compile workers not counted)."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer steps and sizes (about a minute)"
    )
    parser.add_argument(
        "--store",
        type=Path,
        action="append",
        default=[],
        help="results store of a finished sweep to summarise (repeatable)",
    )
    parser.add_argument(
        "--grid",
        type=Path,
        help="results store of the committed grid: write training-grid.md, its exports and figures",
    )
    parser.add_argument(
        "--runs-dir",
        type=Path,
        help="with --grid: the sweeps' run folders (for the attention figure)",
    )
    parser.add_argument(
        "--load-log",
        type=Path,
        help="with --grid: /proc/loadavg samples taken while the grid ran (the load it had)",
    )
    parser.add_argument(
        "--nice", type=int, default=10, help="with --grid: the nice level the sweep ran at"
    )
    parser.add_argument(
        "--compile-check", action="store_true", help="time torch.compile against eager on CPU"
    )
    args = parser.parse_args()
    if args.compile_check:
        torch.set_num_threads(1)
        print(compile_check())
        return
    if args.grid:
        from attnlab.report.grid_report import write_grid_report

        command = " ".join(["python benchmarks/training.py"] + sys.argv[1:])
        print(
            write_grid_report(
                args.grid, args.runs_dir, RESULTS, command, load_log=args.load_log, nice=args.nice
            )
        )
        return
    steps = 30 if args.quick else 200
    sizes = [16] if args.quick else [16, 32, 64]
    torch.set_num_threads(1)
    time_run(
        TaskConfig(name="qsa", params={"N": 8, "q": 1, "d_prime": 4}), BASELINES[0], 5
    )  # warm-up, not reported
    command = " ".join(["python benchmarks/training.py"] + sys.argv[1:])
    lines = [
        "# Training benchmarks",
        "",
        f"Command: `{command}`  ",
        f"Machine: {platform.machine()}, torch {torch.__version__}, one torch thread per run, CPU, float32.",
        "",
        f"## Speed per architecture ({steps} steps of batch 64, side by side in one process)",
        "",
    ]
    lines += speed_table(sizes, steps)
    lines += ["", "## Third-order vs pairwise attention (Match3)", ""]
    lines += third_order_table([12] if args.quick else [12, 24], steps)
    for index, store in enumerate(args.store):
        lines += [""] + sweep_sections(
            store, None, "training" if index == 0 else f"training-{index + 1}"
        )
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "training.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
