"""The Markdown tables of the training-grid report (see grid_report.py), each built from the
exported run records: which cells ran, samples and widths needed, Match3, throughput, load.
"""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from attnlab.experiments.analysis import model_label, task_label
from attnlab.experiments.config import load_sweep
from attnlab.experiments.store import ResultStore
from attnlab.experiments.thresholds import mean_interval

GRID_SWEEPS = (
    "qsa-samples",
    "qsa-samples-n128",
    "qsa-samples-n256",
    "qsa-baselines-n32",
    "qsa-width-grid",
    "match3-widths",
)
MATCH_SOLVED_BIT_ERROR = 0.01


def cells_table(store: ResultStore, records: list[dict[str, Any]]) -> list[str]:
    """Which cells of each committed sweep ran: finished runs against the config's runs."""
    finished = {r["run_id"] for r in records}
    lines = [
        "| sweep | runs in the config | finished | cells (task, model, size) with all seeds | not run |",
        "|---|---:|---:|---:|---|",
    ]
    for name in GRID_SWEEPS:
        configs = load_sweep(name).expand()
        done = [c for c in configs if c.run_id in finished]
        cells: dict[str, list[bool]] = defaultdict(list)
        for c in configs:
            key = f"{task_label(c.task.model_dump())} {model_label(c.model.model_dump())} n={c.train.n_train}"
            cells[key].append(c.run_id in finished)
        missing = sorted(k for k, v in cells.items() if not all(v))
        shown = "; ".join(missing[:6]) + (
            f"; and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        lines.append(
            f"| {name} | {len(configs)} | {len(done)} | {sum(all(v) for v in cells.values())} of "
            f"{len(cells)} | {shown or '-'} |"
        )
    lines += ["", "What each sweep is (its config's description):", ""]
    lines += [f"- `{name}`: {load_sweep(name).description}" for name in GRID_SWEEPS]
    return lines


def throughput_table(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    """Runs per hour of one CPU core (from each run's CPU time) per architecture and N, and the
    wall-clock rate the grid actually had on the shared machine."""
    groups: dict[tuple[str, str, int], list[tuple[float, float]]] = defaultdict(list)
    for r in records:
        if "cpu_seconds" in r["timings"]:
            key = (
                r["config"]["task"]["name"],
                r["config"]["model"]["arch"],
                r["config"]["task"]["params"]["N"],
            )
            wall = r.get("wall_seconds") or r["timings"].get("wall_seconds", float("nan"))
            groups[key].append((r["timings"]["cpu_seconds"], wall))
    lines = [
        "| task | architecture | N | runs | CPU s per run (mean) | wall s per run (mean, shared machine) "
        "| runs per CPU-core hour |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    rates = {}
    for (task, arch, N), pairs in sorted(groups.items()):
        mean = float(np.mean([cpu for cpu, _ in pairs]))
        wall = float(np.mean([w for _, w in pairs]))
        rates[f"{task} {arch} N={N}"] = 3600 / mean
        lines.append(
            f"| {task} | {arch} | {N} | {len(pairs)} | {mean:.1f} | {wall:.1f} | {3600 / mean:,.0f} |"
        )
    stamps = sorted(
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
        for r in records
        if r.get("started_at") and r.get("finished_at")
    )
    summary = {}
    if stamps:
        hours = (max(f for _, f in stamps) - min(s for s, _ in stamps)).total_seconds() / 3600
        cpu = sum(r["timings"].get("cpu_seconds", 0.0) for r in records)
        summary = {
            "runs": len(records),
            "wall_hours": hours,
            "runs_per_wall_hour": len(records) / max(hours, 1e-9),
            "cpu_hours": cpu / 3600,
            "runs_per_cpu_hour": len(records) / max(cpu / 3600, 1e-9),
        }
    return lines, {**summary, "per_group": rates}


def samples_table(needs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | q | model | sizes tried | samples to worst-case error 1/(2q) [95% CI] | per seed | "
        "samples to mean error 1/(2q) [95% CI] | stopped by budget |",
        "|---:|---:|---|---|---|---|---|---:|",
    ]
    for n in sorted(
        needs, key=lambda n: (n["task_params"]["q"], n["task_params"]["N"], n["arch"], n["width"])
    ):
        marks = " ".join(
            f"{'<=' if k == 'at most' else '>' if k == 'more than' else ''}{v:.3g}"
            for v, k in zip(n["max"]["per_seed"], n["max"]["per_seed_kind"])
        )
        lines.append(
            f"| {n['task_params']['N']} | {n['task_params']['q']} | {n['model']} | "
            f"{','.join(map(str, n['sizes_tried']))} | {n['max']['text']} | {marks} | {n['mean']['text']} | "
            f"{n['budget_stops']} of {n['runs']} |"
        )
    return lines


def width_table(widths: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | q | training examples | widths tried | smallest width reaching 1/(2q) [95% CI] | per seed |",
        "|---:|---:|---:|---|---|---|",
    ]
    for w in sorted(widths, key=lambda w: (w["q"], w["N"])):
        marks = " ".join(
            f"{'<=' if k == 'at most' else '>' if k == 'more than' else ''}{v:g}"
            for v, k in zip(w["per_seed"], w["per_seed_kind"])
        )
        lines.append(
            f"| {w['N']} | {w['q']} | {w['n_train']} | {','.join(map(str, w['widths_tried']))} | "
            f"{w['text']} | {marks} |"
        )
    return lines


def match3_table(records: list[dict[str, Any]]) -> list[str]:
    """Bit error rate over seeds per (N, H, m, architecture), and the smallest m that solves
    Match3 (every seed at most 1% wrong bits)."""
    cells: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r["config"]["task"]["name"] == "match3":
            m = r["config"]["model"]
            cells[(r["config"]["task"]["params"]["N"], m["arch"], m["heads"], m["width"])].append(r)
    lines = [
        "| N | model | heads H | width m | seeds | bit error rate, mean [95% CI] | sequences with a wrong bit "
        "(mean) | solved (every seed <= 1% wrong bits) | steps (mean) | stopped at the min_steps floor |",
        "|---:|---|---:|---:|---:|---|---:|---|---:|---:|",
    ]
    for (N, arch, heads, width), runs in sorted(cells.items()):
        rates = [r["metrics"]["bit_error_rate"] for r in runs]
        centre, low, high = mean_interval(rates)
        ci = f"{centre:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(low) else f"{centre:.3f}"
        solved = all(x <= MATCH_SOLVED_BIT_ERROR for x in rates)
        lines.append(
            f"| {N} | {arch} | {heads} | {width} | {len(runs)} | {ci} | "
            f"{np.mean([r['metrics']['max_error'] for r in runs]):.3f} | {'yes' if solved else 'no'} | "
            f"{np.mean([r['metrics']['steps'] for r in runs]):.0f} | "
            f"{sum(r['metrics']['steps'] <= r['config']['train']['min_steps'] for r in runs)} of {len(runs)} |"
        )
    return lines


def load_summary(path: Path | None, records: list[dict[str, Any]] | None = None) -> str:
    """The machine's load while the grid ran, from a log of `DATE load1 load5 load15 ...` lines
    (/proc/loadavg sampled every few minutes next to the sweep); with `records`, only the samples
    taken while one of their runs was training count."""
    if path is None:
        return "load not logged"
    windows = [
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
        for r in records or []
        if r.get("started_at") and r.get("finished_at")
    ]
    loads = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3:
            try:
                stamp = datetime.fromisoformat(fields[0].replace("Z", "+00:00"))
                load = float(fields[2])
            except ValueError:
                continue
            if not windows or any(start <= stamp <= end for start, end in windows):
                loads.append(load)
    if not loads:
        raise ValueError(
            f"{path}: no load samples (expected lines of 'DATE load1 load5 load15 ...')"
        )
    return (
        f"5-minute load average {np.mean(loads):.1f} on average (range {min(loads):.1f}-{max(loads):.1f}, "
        f"{len(loads)} samples) on 2 cores"
    )
