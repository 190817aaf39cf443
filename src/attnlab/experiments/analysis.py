"""From stored runs to the experiments' answers: best-of-LR-grid summaries, the training-set size
at which each architecture reaches the task's threshold, and the smallest width that does.

Tuning is honest: the learning rate (and weight decay) is chosen per seed by validation loss,
never by test error; test metrics are then aggregated over seeds with the median.
"""

from __future__ import annotations

import json
from collections import defaultdict
from statistics import median
from typing import Any

# Axes the sweeps tune over; a summary row takes the best of them per seed.
TUNED = ("lr", "weight_decay")


def model_label(model: dict[str, Any]) -> str:
    """A short name for a model config: 'attention m=32 H=1', 'lstm-bi m=32', 'mlp m=256x2'."""
    arch = model["arch"]
    if arch in ("attention", "third_order"):
        return f"{arch} m={model['width']} H={model['heads']}"
    if arch in ("lstm", "gru"):
        return f"{arch}{'-bi' if model['bidirectional'] else ''} m={model['width']}"
    return f"{arch} m={model['width']}x{model['layers']}"


def task_label(task: dict[str, Any]) -> str:
    params = ",".join(f"{k}={v}" for k, v in sorted(task["params"].items()))
    return f"{task['name']}({params})"


def _group_key(config: dict[str, Any]) -> str:
    train = {k: v for k, v in config["train"].items() if k not in TUNED}
    return json.dumps(
        {"task": config["task"], "model": config["model"], "train": train}, sort_keys=True
    )


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, model, training setup): per seed the run with the lowest validation loss
    over the tuned axes, then medians over seeds of its test metrics."""
    per_seed: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for record in records:
        key, seed = _group_key(record["config"]), record["seed"]
        best = per_seed[key].get(seed)
        if best is None or record["metrics"]["best_val_loss"] < best["metrics"]["best_val_loss"]:
            per_seed[key][seed] = record
    rows = []
    for key, by_seed in per_seed.items():  # noqa: B007 (the loop counts; its variable is read after or not needed)
        chosen = [by_seed[s] for s in sorted(by_seed)]
        config = chosen[0]["config"]
        metric_names = [k for k, v in chosen[0]["metrics"].items() if isinstance(v, (int, float))]
        row = {
            "task": task_label(config["task"]),
            "task_name": config["task"]["name"],
            "task_params": config["task"]["params"],
            "model": model_label(config["model"]),
            "arch": config["model"]["arch"],
            "width": config["model"]["width"],
            "heads": config["model"]["heads"],
            "n_train": config["train"]["n_train"],
            "seeds": len(chosen),
            "chosen_lr": [r["config"]["train"]["lr"] for r in chosen],
        }
        for name in metric_names:
            row[name] = float(median(float(r["metrics"][name]) for r in chosen))
        row["reached_fraction"] = sum(
            bool(r["metrics"]["reached_threshold"]) for r in chosen
        ) / len(chosen)
        rows.append(row)
    rows.sort(
        key=lambda r: (r["task"], r["arch"], r["width"], r["heads"], r["model"], r["n_train"])
    )
    return rows


def samples_to_threshold(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per task and model: the smallest training-set size whose median worst-case error is within
    the task's threshold (None if none is), the largest size tried, and the ratio to attention's
    need on the same task (a lower bound, marked '>', when the model never got there)."""
    needs: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        entry = needs.setdefault(
            (row["task"], row["model"]),
            {
                "task": row["task"],
                "model": row["model"],
                "arch": row["arch"],
                "samples_needed": None,
                "largest_tried": 0,
                "threshold": row["threshold"],
            },
        )
        entry["largest_tried"] = max(entry["largest_tried"], row["n_train"])
        if row["max_error"] <= row["threshold"]:
            current = entry["samples_needed"]
            entry["samples_needed"] = (
                row["n_train"] if current is None else min(current, row["n_train"])
            )
    out = list(needs.values())
    for entry in out:
        reference = [
            e["samples_needed"]
            for e in out
            if e["task"] == entry["task"]
            and e["arch"] == "attention"
            and e["samples_needed"] is not None
        ]
        entry["ratio_to_attention"] = None
        if reference:
            base = min(reference)
            if entry["samples_needed"] is not None:
                entry["ratio_to_attention"] = f"{entry['samples_needed'] / base:.3g}"
            else:
                entry["ratio_to_attention"] = f">{entry['largest_tried'] / base:.3g}"
    return sorted(out, key=lambda e: (e["task"], e["model"]))


def width_to_threshold(rows: list[dict[str, Any]], arch: str = "attention") -> list[dict[str, Any]]:
    """Per task (and heads): the smallest trained width of `arch` whose median worst-case error is
    within the threshold, with the task parameters spelled out for plotting against q and N."""
    best: dict[tuple[str, int], dict[str, Any]] = {}
    for row in rows:
        if row["arch"] != arch:
            continue
        entry = best.setdefault(
            (row["task"], row["heads"]),
            {
                "task": row["task"],
                **row["task_params"],
                "heads": row["heads"],
                "width_needed": None,
                "widths_tried": [],
            },
        )
        entry["widths_tried"] = sorted(set(entry["widths_tried"]) | {row["width"]})
        if row["max_error"] <= row["threshold"]:
            current = entry["width_needed"]
            entry["width_needed"] = row["width"] if current is None else min(current, row["width"])
    return sorted(best.values(), key=lambda e: (e["task"], e["heads"]))
