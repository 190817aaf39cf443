"""The Markdown tables of the training-grid report (see grid_report.py), each built from the
exported run records: which cells ran, samples and widths needed, Match3, throughput, load.
"""

from __future__ import annotations

import json
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
from attnlab.report.training import QSA_SWEEPS, step_floor, stopped_at_floor

# the qSA sweeps the training claim is judged on, then those that serve only the tables
GRID_SWEEPS = (*QSA_SWEEPS, "qsa-width-grid", "match3-widths", "match3-long", "match3-small-n")
BASELINE_ARCHS = ("mlp", "lstm", "gru")
FLOAT_BITS = 32
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


def _busy_hours(stamps: list[tuple[datetime, datetime]]) -> float:
    """Hours in which at least one run was training (the union of the runs' intervals): the
    calendar span without the idle gaps between sweeps."""
    total, end = 0.0, None
    start = None
    for s, f in sorted(stamps):
        if end is None or s > end:
            if end is not None:
                total += (end - start).total_seconds()
            start, end = s, f
        else:
            end = max(end, f)
    if end is not None:
        total += (end - start).total_seconds()
    return total / 3600


def throughput_table(records: list[dict[str, Any]]) -> tuple[list[str], dict[str, float]]:
    """Runs per hour of one CPU core per architecture and N (from each run's CPU time, and from
    its wall time: one run holds one core), and the grid's rates without the idle gaps between
    sweeps (the span from first start to last finish includes them, so no rate is taken from it)."""
    groups: dict[tuple[str, str, int], list[tuple[float, float, int]]] = defaultdict(list)
    for r in records:
        if "cpu_seconds" in r["timings"]:
            key = (
                r["config"]["task"]["name"],
                r["config"]["model"]["arch"],
                r["config"]["task"]["params"]["N"],
            )
            wall = r.get("wall_seconds") or r["timings"].get("wall_seconds", float("nan"))
            groups[key].append((r["timings"]["cpu_seconds"], wall, r["metrics"]["steps"]))
    lines = [
        "| task | architecture | N | runs | steps per run (mean) | CPU ms per step | CPU s per run (mean) "
        "| wall s per run (mean, shared machine) | runs per CPU-core hour (CPU time) "
        "| runs per core-hour of run wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    rates = {}
    for (task, arch, N), triples in sorted(groups.items()):
        cpu = float(np.mean([c for c, _, _ in triples]))
        wall = float(np.mean([w for _, w, _ in triples]))
        steps = float(np.mean([n for _, _, n in triples]))
        per_step = 1000 * sum(c for c, _, _ in triples) / sum(n for _, _, n in triples)
        rates[f"{task} {arch} N={N}"] = 3600 / cpu
        lines.append(
            f"| {task} | {arch} | {N} | {len(triples)} | {steps:.0f} | {per_step:.2f} | {cpu:.1f} | "
            f"{wall:.1f} | {3600 / cpu:,.0f} | {3600 / wall:,.0f} |"
        )
    stamps = [
        (datetime.fromisoformat(r["started_at"]), datetime.fromisoformat(r["finished_at"]))
        for r in records
        if r.get("started_at") and r.get("finished_at")
    ]
    summary: dict[str, Any] = {}
    if stamps:
        span = (max(f for _, f in stamps) - min(s for s, _ in stamps)).total_seconds() / 3600
        busy = _busy_hours(stamps)
        cpu = sum(r["timings"].get("cpu_seconds", 0.0) for r in records)
        run_wall = sum(
            r.get("wall_seconds") or r["timings"].get("wall_seconds", 0.0) for r in records
        )
        summary = {
            "runs": len(records),
            "span_hours": span,
            "busy_wall_hours": busy,
            "idle_hours": span - busy,
            "runs_per_busy_wall_hour": len(records) / max(busy, 1e-9),
            "run_wall_core_hours": run_wall / 3600,
            "runs_per_core_hour_of_run_wall": len(records) / max(run_wall / 3600, 1e-9),
            "cpu_hours": cpu / 3600,
            "runs_per_cpu_hour": len(records) / max(cpu / 3600, 1e-9),
        }
    return lines, {**summary, "per_group": rates}


def _seed_marks(values, kinds, spec: str) -> str:
    """Per-seed needs, `<=` before one within at the smallest size, `>` before one never within."""
    return " ".join(
        f"{'<=' if k == 'at most' else '>' if k == 'more than' else ''}{v:{spec}}"
        for v, k in zip(values, kinds)
    )


def samples_table(needs: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | q | model | sizes tried | samples to worst-case error 1/(2q) [95% CI] | per seed | "
        "samples to mean error 1/(2q) [95% CI] | stopped by budget |",
        "|---:|---:|---|---|---|---|---|---:|",
    ]
    for n in sorted(
        needs, key=lambda n: (n["task_params"]["q"], n["task_params"]["N"], n["arch"], n["width"])
    ):
        marks = _seed_marks(n["max"]["per_seed"], n["max"]["per_seed_kind"], ".3g")
        lines.append(
            f"| {n['task_params']['N']} | {n['task_params']['q']} | {n['model']} | "
            f"{','.join(map(str, n['sizes_tried']))} | {n['max']['text']} | {marks} | {n['mean']['text']} | "
            f"{n['budget_stops']} of {n['runs']} |"
        )
    return lines


def success_matrix(needs: list[dict[str, Any]], q: int = 1) -> list[str]:
    """Samples to worst-case error 1/(2q) per model (rows) and N (columns), at one q: where each
    model starts and stops succeeding as N grows. MLP cells give the first-layer width against
    the FFN bound N d'/2 beside the need."""
    chosen = [n for n in needs if n["task_params"]["q"] == q]
    Ns = sorted({n["task_params"]["N"] for n in chosen})
    rows: dict[tuple, dict[int, str]] = defaultdict(dict)
    for n in chosen:
        N, kinds = n["task_params"]["N"], n["max"]["per_seed_kind"]
        seeds = n["max"]["per_seed"]
        if not any(k in ("at most", "more than") for k in kinds):
            text = f"{float(np.exp(np.mean(np.log(seeds)))):.3g}"
        elif all(k == "more than" for k in kinds):
            text = f"> {max(seeds):.3g}"
        elif all(k == "at most" for k in kinds):
            text = f"<= {max(seeds):.3g}"
        else:
            text = "seeds " + _seed_marks(seeds, kinds, ".3g")
        if n["arch"] == "mlp":
            text += f" ({n['width'] / (N * n['task_params']['d_prime'] / 2):g}x)"
        rows[(n["arch"] != "attention", n["arch"], n["width"], n["model"])][N] = text
    lines = [
        f"| model (q = {q}) | " + " | ".join(f"N = {N}" for N in Ns) + " |",
        "|---|" + "---|" * len(Ns),
    ]
    for key in sorted(rows):
        lines.append(f"| {key[3]} | " + " | ".join(rows[key].get(N, "-") for N in Ns) + " |")
    return lines


def width_table(widths: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| N | q | training examples | widths tried | smallest width reaching 1/(2q) [95% CI] | per seed |",
        "|---:|---:|---:|---|---|---|",
    ]
    for w in sorted(widths, key=lambda w: (w["q"], w["N"])):
        marks = _seed_marks(w["per_seed"], w["per_seed_kind"], "g")
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
            key = (
                r["config"]["task"]["params"]["N"],
                m["arch"],
                m["heads"],
                m["width"],
                step_floor(r),
            )
            cells[key].append(r)
    lines = [
        "| N | model | heads H | width m | step floor | seeds | bit error rate, mean [95% CI] | sequences with "
        "a wrong bit (mean) | solved (every seed <= 1% wrong bits) | steps (mean) | stopped at the floor "
        "| stopped by the budget |",
        "|---:|---|---:|---:|---:|---:|---|---:|---|---:|---:|---:|",
    ]
    for (N, arch, heads, width, floor), runs in sorted(cells.items()):
        rates = [r["metrics"]["bit_error_rate"] for r in runs]
        centre, low, high = mean_interval(rates)
        ci = f"{centre:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(low) else f"{centre:.3f}"
        solved = all(x <= MATCH_SOLVED_BIT_ERROR for x in rates)
        lines.append(
            f"| {N} | {arch} | {heads} | {width} | {floor} | {len(runs)} | {ci} | "
            f"{np.mean([r['metrics']['max_error'] for r in runs]):.3f} | {'yes' if solved else 'no'} | "
            f"{np.mean([r['metrics']['steps'] for r in runs]):.0f} | "
            f"{sum(map(stopped_at_floor, runs))} of {len(runs)} | "
            f"{sum(r['metrics']['stop_reason'] == 'budget' for r in runs)} of {len(runs)} |"
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


def match3_summary(records: list[dict[str, Any]]) -> list[str]:
    """Per N and step floor: the smallest standard-attention size m*H that solved Match3 (every
    seed <= 1% wrong bits) against the third-order unit's smallest m, from the same runs as
    match3_table."""
    solved: dict[tuple[int, int, str], list[tuple[int, bool]]] = defaultdict(list)
    cells: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        if r["config"]["task"]["name"] == "match3":
            m = r["config"]["model"]
            key = (
                r["config"]["task"]["params"]["N"],
                step_floor(r),
                m["arch"],
                m["width"],
                m["heads"],
            )
            cells[key].append(r["metrics"]["bit_error_rate"])
    for (N, floor, arch, width, heads), rates in cells.items():
        ok = all(x <= MATCH_SOLVED_BIT_ERROR for x in rates)
        solved[(N, floor, arch)].append((width * heads, ok))

    def _smallest(entries: list[tuple[int, bool]] | None) -> str:
        if not entries:
            return "not run"
        hits = sorted(size for size, ok in entries if ok)
        tried = sorted({size for size, _ in entries})
        if hits:
            return f"{hits[0]} (tried {','.join(map(str, tried))})"
        return f"none up to {tried[-1]} (tried {','.join(map(str, tried))})"

    lines = [
        "| N | step floor | standard attention: smallest m*H solving it | third-order: smallest m solving it |",
        "|---:|---:|---|---|",
    ]
    for N, floor in sorted({(N, f) for N, f, _ in solved}):
        lines.append(
            f"| {N} | {floor} | {_smallest(solved.get((N, floor, 'attention')))} | "
            f"{_smallest(solved.get((N, floor, 'third_order')))} |"
        )
    return lines


def _interval_text(values: list[float]) -> str:
    centre, low, high = mean_interval(values)
    return f"{centre:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(low) else f"{centre:.3f}"


def _zero_predictor(params: dict[str, Any], n: int = 1024) -> tuple[float, float]:
    """Mean and worst-case error of predicting 0 for every y_i (the mean target) on n sequences:
    the level a model that learned nothing sits at."""
    from attnlab.tasks import get_task

    task = get_task("qsa", **params)
    norms = np.linalg.norm(np.asarray(task.sample(np.random.default_rng(0), n).targets), axis=-1)
    return float(norms.mean()), float(norms.max())


def _bound_side(model: dict[str, Any], N: int, d_prime: int) -> tuple[str, str]:
    """(size against the bound, which side): the FFN bound is a first-layer width of about
    N d'/2; the RNN bound is (N-1)/2 bits of state for a one-pass RNN."""
    if model["arch"] == "mlp":
        bound = N * d_prime / 2
        side = "below" if model["width"] < bound else "above"
        return (
            f"first layer {model['width']} vs N d'/2 = {bound:g} ({model['width'] / bound:.2g}x)",
            side,
        )
    floats = (
        model["width"]
        * (2 if model["arch"] == "lstm" else 1)
        * (2 if model["bidirectional"] else 1)
    )
    bound = (N - 1) / 2
    side = (
        "above in floats"
        if floats >= bound
        else f"above at float{FLOAT_BITS} only"
        if floats * FLOAT_BITS >= bound
        else "below"
    )
    note = " (bi: two passes, the one-pass bound does not apply)" if model["bidirectional"] else ""
    return (
        f"state {floats} floats = {floats * FLOAT_BITS} bits at float{FLOAT_BITS} vs (N-1)/2 = {bound:g} bits{note}",
        side,
    )


def bracketing_table(records: list[dict[str, Any]]) -> list[str]:
    """The FFN and RNN baselines by size against their bound, N, training-set size and step floor:
    errors over seeds with their interval, beside the error of predicting 0 (learning nothing), and
    how many runs stopped at the floor (a run stopped there on a plateau may not have trained)."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        c = r["config"]
        if c["task"]["name"] == "qsa" and c["model"]["arch"] in BASELINE_ARCHS:
            p = c["task"]["params"]
            model = json.dumps(c["model"], sort_keys=True)
            cells[
                (
                    p["q"],
                    p["N"],
                    c["model"]["arch"],
                    c["model"]["width"],
                    model,
                    c["train"]["n_train"],
                    step_floor(r),
                )
            ].append(r)
    lines = [
        "| N | q | model | size against the bound | side | training examples | step floor | seeds | "
        "worst-case error [95% CI] | mean error [95% CI] | predict 0: mean / worst | seeds within "
        "1/(2q) | steps (mean) | stopped at the floor | stopped by budget |",
        "|---:|---:|---|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for (q, N, _, _, model_json, n_train, floor), runs in sorted(cells.items()):
        model = json.loads(model_json)
        params = runs[0]["config"]["task"]["params"]
        size, side = _bound_side(model, N, params["d_prime"])
        zero_mean, zero_max = _zero_predictor(params)
        lines.append(
            f"| {N} | {q} | {model_label(model)} | {size} | {side} | {n_train} | {floor} | {len(runs)} | "
            f"{_interval_text([r['metrics']['max_error'] for r in runs])} | "
            f"{_interval_text([r['metrics']['mean_error'] for r in runs])} | {zero_mean:.2f} / {zero_max:.2f} | "
            f"{sum(r['metrics']['reached_threshold'] for r in runs)} of {len(runs)} | "
            f"{np.mean([r['metrics']['steps'] for r in runs]):.0f} | "
            f"{sum(map(stopped_at_floor, runs))} of {len(runs)} | "
            f"{sum(r['metrics']['stop_reason'] == 'budget' for r in runs)} of {len(runs)} |"
        )
    return lines


def floor_table(superseded: list[dict[str, Any]], kept: list[dict[str, Any]]) -> list[str]:
    """Where a (setting, model) ran with two step floors: per training-set size and floor, the
    worst-case error and steps of each seed (the report's sample needs use the longer floor)."""

    def key(r: dict[str, Any]) -> tuple:
        c = r["config"]
        return (
            json.dumps(c["task"]["params"], sort_keys=True),
            json.dumps(c["model"], sort_keys=True),
        )

    replaced = {key(r) for r in superseded}
    rows: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in superseded + [r for r in kept if key(r) in replaced]:
        rows[key(r) + (r["config"]["train"]["n_train"], step_floor(r))].append(r)
    lines = [
        "| N | q | model | training examples | step floor | worst-case error per seed (0, 1, 2) | steps per seed "
        "| seeds within 1/(2q) |",
        "|---:|---:|---|---:|---:|---|---|---:|",
    ]

    def order(item: tuple) -> tuple:
        params = json.loads(item[0][0])
        return (params["q"], params["N"], item[0][1], item[0][2], item[0][3])

    for (params_json, model_json, n_train, floor), runs in sorted(rows.items(), key=order):
        params = json.loads(params_json)
        runs = sorted(runs, key=lambda r: r["seed"])
        errors = " ".join(f"{r['metrics']['max_error']:.3f}" for r in runs)
        steps = " ".join(str(r["metrics"]["steps"]) for r in runs)
        lines.append(
            f"| {params['N']} | {params['q']} | {model_label(json.loads(model_json))} | {n_train} | {floor} | "
            f"{errors} | {steps} | "
            f"{sum(r['metrics']['reached_threshold'] for r in runs)} of {len(runs)} |"
        )
    return lines
