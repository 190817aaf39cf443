"""PNG figures of the experiments (matplotlib, Agg backend): error vs training-set size per
architecture, and the width one head needs vs q."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_error_vs_samples(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """One panel per task: median worst-case test error (solid) and mean error (dotted) against
    the training-set size, one line per model, and the task's threshold (dashed)."""
    by_task: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_task[row["task"]].append(row)
    if not by_task:
        raise ValueError("no finished runs to plot; run a sweep into this store first")
    tasks = sorted(by_task)
    cols = min(3, math.ceil(math.sqrt(len(tasks))))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in by_task[task]:
            lines[row["model"]].append(row)
        for index, (model, points) in enumerate(sorted(lines.items())):
            points.sort(key=lambda r: r["n_train"])
            colour = f"C{index % 10}"
            x = [p["n_train"] for p in points]
            ax.plot(x, [p["max_error"] for p in points], "o-", color=colour, label=model)
            if "mean_error" in points[0]:
                ax.plot(x, [p["mean_error"] for p in points], ":", color=colour, alpha=0.7)
        ax.axhline(by_task[task][0]["threshold"], color="k", ls="--", lw=1, label="threshold")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training examples")
        ax.set_ylabel("test error (max solid, mean dotted)")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[len(tasks):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    return _save(fig, path)


def plot_threshold_width(width_rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Smallest trained width reaching the threshold against q, one line per N (unreached widths
    are drawn as open markers at the largest width tried)."""
    lines: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for row in width_rows:
        if "q" in row and "N" in row:
            lines[(row["N"], row["heads"])].append(row)
    if not lines:
        raise ValueError("no qSA width runs to plot; run the qsa-width sweep into this store first")
    fig, ax = plt.subplots(figsize=(5, 3.8))
    for index, ((N, heads), points) in enumerate(sorted(lines.items())):
        points.sort(key=lambda r: r["q"])
        colour = f"C{index % 10}"
        shift = 0.04 * (index - (len(lines) - 1) / 2)  # lines that coincide stay visible
        reached = [p for p in points if p["width_needed"] is not None]
        ax.plot([p["q"] + shift for p in reached], [p["width_needed"] for p in reached], "o-", color=colour,
                label=f"N={N}" + (f", H={heads}" if heads > 1 else ""))
        missed = [p for p in points if p["width_needed"] is None]
        ax.plot([p["q"] + shift for p in missed], [max(p["widths_tried"]) for p in missed], "o", color=colour,
                mfc="none")
    ax.set_xticks(sorted({row["q"] for rows in lines.values() for row in rows}))
    ax.set_xlabel("q")
    ax.set_ylabel("smallest width m reaching 1/(2q)")
    ax.set_yscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG at `path` (making its folder) and free it."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
