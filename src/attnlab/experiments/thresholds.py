"""What the grids measure, with intervals over seeds: the training-set size at which each model
reaches a task's threshold, the smallest width that does, and a growth fit in N.

Per seed, the samples needed is read off that seed's error-vs-size curve: the first grid size whose
error is within the threshold, refined by log-log interpolation with the size before it. A seed
that is within the threshold at the smallest size tried is left-censored (the need is at most that
size); one never within it is right-censored (more than the largest size). Intervals are 95%
Student-t intervals of the mean of log2(need) over seeds, reported back on the sample scale
(a geometric mean and its interval); they are given only when no seed is censored.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from typing import Any

import numpy as np
from scipy import stats

from attnlab.experiments.analysis import TUNED, model_label, task_label

LEVEL = 0.95


def _best_per_seed(
    records: list[dict[str, Any]], axis: str
) -> dict[tuple, dict[int, dict[float, dict]]]:
    """{(task, model, fixed training setup): {seed: {axis value: best-by-validation record}}}."""
    out: dict[tuple, dict[int, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for record in records:
        config = record["config"]
        train = {
            k: v
            for k, v in config["train"].items()
            if k not in TUNED and k != axis and k not in ("device", "threads")
        }
        model = dict(config["model"])
        value = config["train"][axis] if axis in config["train"] else model.pop(axis)
        key = (
            task_label(config["task"]),
            json.dumps(model, sort_keys=True),
            json.dumps(train, sort_keys=True),
        )
        slot = out[key][record["seed"]]
        best = slot.get(value)
        if best is None or record["metrics"]["best_val_loss"] < best["metrics"]["best_val_loss"]:
            slot[value] = record
    return out


def crossing(sizes: list[float], errors: list[float], threshold: float) -> tuple[float, str]:
    """Where a curve first gets within `threshold`: (value, kind), kind one of 'measured',
    'at most' (already within at the first size) or 'more than' (never within)."""
    for index, (size, error) in enumerate(zip(sizes, errors)):
        if error <= threshold:
            if index == 0:
                return float(size), "at most"
            s0, e0 = sizes[index - 1], errors[index - 1]
            if error <= 0 or e0 <= threshold:
                return float(size), "measured"
            t = (math.log(e0) - math.log(threshold)) / (math.log(e0) - math.log(error))
            return float(2 ** (math.log2(s0) + t * (math.log2(size) - math.log2(s0)))), "measured"
    return float(sizes[-1]), "more than"


def geometric_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Geometric mean of positive values and the t-interval of the mean of their log2."""
    logs = np.log2(np.asarray(values, dtype=float))
    centre = float(logs.mean())
    if len(logs) < 2:
        return 2**centre, float("nan"), float("nan")
    half = float(
        stats.t.ppf(0.5 + level / 2, len(logs) - 1) * logs.std(ddof=1) / math.sqrt(len(logs))
    )
    return 2**centre, 2 ** (centre - half), 2 ** (centre + half)


def mean_interval(values: list[float], level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and t-interval of the mean."""
    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()), float(x.mean()) - half, float(x.mean()) + half


def _summary(per_seed: list[tuple[float, str]]) -> dict[str, Any]:
    values = [v for v, _ in per_seed]
    kinds = [k for _, k in per_seed]
    out: dict[str, Any] = {
        "per_seed": values,
        "per_seed_kind": kinds,
        "seeds": len(values),
        "censored": sum(k != "measured" for k in kinds),
    }
    if all(k == "more than" for k in kinds):
        out.update(estimate=None, low=None, high=None, text=f"not reached (> {max(values):g})")
        return out
    centre, low, high = geometric_interval(values)
    out.update(estimate=centre, low=low, high=high)
    if out["censored"] == 0:
        out["text"] = f"{centre:.3g} [{low:.3g}, {high:.3g}]"
    elif all(k == "at most" for k in kinds):
        out.update(estimate=None, low=None, high=None, text=f"<= {min(values):g} (all seeds)")
    else:
        marks = " ".join(
            f"{'<=' if k == 'at most' else '>' if k == 'more than' else ''}{v:.3g}"
            for v, k in per_seed
        )
        out["text"] = f"seeds {marks}"
    return out


def sample_needs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and model: samples needed for the worst-case error ('max') and for the mean
    error ('mean') to reach the task's threshold, per seed and with an interval over seeds."""
    rows = []
    for (task, model_json, _), by_seed in _best_per_seed(records, "n_train").items():
        model = json.loads(model_json)
        first = next(iter(next(iter(by_seed.values())).values()))
        threshold = float(first["metrics"]["threshold"])
        row: dict[str, Any] = {
            "task": task,
            "task_params": first["config"]["task"]["params"],
            "model": model_label(model),
            "arch": model["arch"],
            "width": model["width"],
            "threshold": threshold,
        }
        budget_stops = 0
        # the mean error for qSA; Match tasks have no mean, their second error is the bit error rate
        second = "mean_error" if "mean_error" in first["metrics"] else "bit_error_rate"
        for metric, key in (("max_error", "max"), (second, "mean")):
            per_seed = []
            for seed in sorted(by_seed):
                sizes = sorted(by_seed[seed])
                errors = [float(by_seed[seed][s]["metrics"][metric]) for s in sizes]
                per_seed.append(crossing(sizes, errors, threshold))
            row[key] = _summary(per_seed)
        for seed_runs in by_seed.values():
            budget_stops += sum(
                r["metrics"].get("stop_reason") == "budget" for r in seed_runs.values()
            )
        row["sizes_tried"] = sorted({s for runs in by_seed.values() for s in runs})
        row["runs"] = sum(len(runs) for runs in by_seed.values())
        row["budget_stops"] = budget_stops
        rows.append(row)
    return sorted(rows, key=lambda r: (r["task"], r["arch"], r["width"], r["model"]))


def width_needs(records: list[dict[str, Any]], arch: str = "attention") -> list[dict[str, Any]]:
    """Per task (and head count): the smallest width of `arch` whose worst-case error is within
    the threshold, per seed, with an interval over seeds."""
    rows = []
    chosen = [r for r in records if r["config"]["model"]["arch"] == arch]
    for (task, model_json, train_json), by_seed in _best_per_seed(chosen, "width").items():
        first = next(iter(next(iter(by_seed.values())).values()))
        threshold = float(first["metrics"]["threshold"])
        per_seed = []
        for seed in sorted(by_seed):
            widths = sorted(by_seed[seed])
            reached = [
                w for w in widths if float(by_seed[seed][w]["metrics"]["max_error"]) <= threshold
            ]
            per_seed.append(
                (float(reached[0]), "at most" if reached[0] == widths[0] else "measured")
                if reached
                else (float(widths[-1]), "more than")
            )
        summary = _summary(per_seed)
        rows.append(
            {
                "task": task,
                **first["config"]["task"]["params"],
                "heads": json.loads(model_json)["heads"],
                "n_train": json.loads(train_json)["n_train"],
                "threshold": threshold,
                "widths_tried": sorted({w for runs in by_seed.values() for w in runs}),
                **summary,
            }
        )
    return sorted(rows, key=lambda r: (r["task"], r["heads"]))


def growth_fit(points: list[tuple[float, float]], level: float = LEVEL) -> dict[str, Any]:
    """Least-squares fit log2(need) = a + b log2(N) over (N, need) points (one per seed and N),
    with the t-interval of the exponent b. Logarithmic growth need = c log N has local exponent
    1 / ln N, so b's interval lying below 1 / ln(N_min) is consistent with at most logarithmic
    growth, and lying above it rules it out."""
    x = np.log2([p[0] for p in points])
    y = np.log2([p[1] for p in points])
    distinct = len(set(x.tolist()))
    if distinct < 2 or len(points) < 3:
        return {
            "points": len(points),
            "distinct_N": distinct,
            "exponent": None,
            "verdict": "too few points",
        }
    design = np.column_stack([np.ones_like(x), x])
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    residual = y - design @ coef
    dof = len(points) - 2
    sigma2 = float(residual @ residual) / dof if dof > 0 else float("nan")
    cov = sigma2 * np.linalg.inv(design.T @ design)
    half = float(stats.t.ppf(0.5 + level / 2, max(dof, 1)) * math.sqrt(cov[1, 1]))
    b = float(coef[1])
    log_exponent = 1 / math.log(min(p[0] for p in points))
    if b + half <= log_exponent:
        verdict = "at most logarithmic"
    elif b - half > log_exponent:
        verdict = "faster than logarithmic"
    else:
        verdict = "inconclusive"
    return {
        "points": len(points),
        "distinct_N": distinct,
        "exponent": b,
        "low": b - half,
        "high": b + half,
        "log_growth_exponent": log_exponent,
        "verdict": verdict,
    }
