"""PNG figures of the experiments (matplotlib, Agg backend): error vs training-set size per
architecture, samples needed vs N, the width one head needs vs q and vs N (all with their
intervals over seeds), training curves, and where a trained head looks on one qSA input."""

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
    # tasks in the order of their parameters (q, then N), not of their labels' text
    tasks = sorted(
        by_task,
        key=lambda t: (
            by_task[t][0].get("task_name", t),
            *(by_task[t][0].get("task_params", {}).get(k, 0) for k in ("q", "N")),
            t,
        ),
    )
    cols = min(3, math.ceil(math.sqrt(len(tasks))))
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    styles = _model_styles(rows) if all("arch" in r and "width" in r for r in rows) else {}
    for ax, task in zip(axes.flat, tasks):
        lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in by_task[task]:
            lines[row["model"]].append(row)
        ordered = [m for m in styles if m in lines] + sorted(set(lines) - set(styles))
        for index, model in enumerate(ordered):
            points = sorted(lines[model], key=lambda r: r["n_train"])
            colour, marker = styles.get(model, (f"C{index % 10}", "o"))
            x = [p["n_train"] for p in points]
            ax.plot(
                x, [p["max_error"] for p in points], marker + "-", color=colour, label=model, ms=5
            )
            if "mean_error" in points[0]:
                ax.plot(x, [p["mean_error"] for p in points], ":", color=colour, alpha=0.7)
        ax.axhline(by_task[task][0]["threshold"], color="k", ls="--", lw=1, label="threshold")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(task, fontsize=9)
        ax.set_xlabel("training examples")
        ax.set_ylabel("test error (max solid, mean dotted)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.set_visible(False)
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
        ax.plot(
            [p["q"] + shift for p in reached],
            [p["width_needed"] for p in reached],
            "o-",
            color=colour,
            label=f"N={N}" + (f", H={heads}" if heads > 1 else ""),
        )
        missed = [p for p in points if p["width_needed"] is None]
        ax.plot(
            [p["q"] + shift for p in missed],
            [max(p["widths_tried"]) for p in missed],
            "o",
            color=colour,
            mfc="none",
        )
    ax.set_xticks(sorted({row["q"] for rows in lines.values() for row in rows}))
    ax.set_xlabel("q")
    ax.set_ylabel("smallest width m reaching 1/(2q)")
    ax.set_yscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _need_errorbar(ax, xs, rows, key, colour, label, marker="o", shift=1.0):
    """Plot one line of needs with their intervals. A cell with a censored seed has no interval:
    its seeds are drawn one by one, measured ones as small dots and censored ones as open
    triangles (up: more than the largest size tried, down: at most the smallest). `shift`
    multiplies those x positions, so that models censored at the same size stay apart."""
    xs_m, ys, lo, hi = [], [], [], []
    for x, row in zip(xs, rows):
        need = row[key]
        if need["estimate"] is None or set(need["per_seed_kind"]) != {"measured"}:
            for value, kind in zip(need["per_seed"], need["per_seed_kind"]):
                style = {"measured": ".", "more than": "^"}.get(kind, "v")
                filled = colour if kind == "measured" else "none"
                ax.plot([x * shift], [value], style, color=colour, mfc=filled, ms=8)
            continue
        xs_m.append(x)
        ys.append(need["estimate"])
        lo.append(need["estimate"] - need["low"])
        hi.append(need["high"] - need["estimate"])
    if xs_m:
        ax.errorbar(xs_m, ys, yerr=[lo, hi], fmt=marker + "-", color=colour, capsize=3, label=label)
    else:
        ax.plot([], [], marker + "-", color=colour, label=label)


def plot_samples_vs_n(needs: list[dict[str, Any]], path: str | Path) -> Path:
    """Samples needed to reach 1/(2q) against N, one line per model, one column per q; top row the
    worst-case error (the paper's notion), bottom row the mean error. Log axes, 95% intervals over
    seeds; open triangles are censored (up: not reached at the largest size, down: reached at the
    smallest)."""
    qsa = [n for n in needs if "N" in n["task_params"] and "q" in n["task_params"]]
    if not qsa:
        raise ValueError(
            "no qSA sample-size runs to plot; run the qsa-samples sweep into this store first"
        )
    qs = sorted({n["task_params"]["q"] for n in qsa})
    fig, axes = plt.subplots(2, len(qs), figsize=(4.8 * len(qs), 7.6), squeeze=False)
    styles = _model_styles(qsa)
    for col, q in enumerate(qs):
        for row, (key, what) in enumerate((("max", "worst-case error"), ("mean", "mean error"))):
            ax = axes[row][col]
            for index, (model, (colour, marker)) in enumerate(styles.items()):
                line = sorted(
                    (n for n in qsa if n["model"] == model and n["task_params"]["q"] == q),
                    key=lambda n: n["task_params"]["N"],
                )
                if line:
                    _need_errorbar(
                        ax,
                        [n["task_params"]["N"] for n in line],
                        line,
                        key,
                        colour,
                        model,
                        marker=marker,
                        shift=2 ** (0.025 * (index - (len(styles) - 1) / 2)),
                    )
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ns = sorted({n["task_params"]["N"] for n in qsa if n["task_params"]["q"] == q})
            ax.set_xticks(ns, [str(n) for n in ns])
            ax.set_xlim(ns[0] / 1.3, ns[-1] * 1.3)
            ax.set_xlabel("sequence length N")
            ax.set_ylabel(f"samples to {what} <= 1/(2q)")
            ax.set_title(f"qSA, q = {q}", fontsize=10)
            ax.grid(alpha=0.3, which="both")
    # one legend for every panel, below them: a model keeps its colour and marker everywhere
    handles = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    ordered = [m for m in styles if m in handles]
    fig.legend(
        [handles[m] for m in ordered],
        ordered,
        loc="lower center",
        ncol=min(6, len(ordered)),
        fontsize=7,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.03 + 0.022 * math.ceil(len(ordered) / 6), 1, 1))
    return _save(fig, path, layout=False)


# per family: its marker and the colours its models take in turn
FAMILY_STYLE = {
    "attention": (("C0", "C1", "C4"), "o"),
    "lstm": (("C3", "C5"), "D"),
    "gru": (("C2", "C6"), "D"),
}


def _model_styles(needs: list[dict[str, Any]]) -> dict[str, tuple[Any, str]]:
    """A colour and marker per model: attention, the RNNs, then MLPs by width, the MLPs shaded
    from light (narrow) to dark (wide) so that width reads off the colour."""
    import numpy as np

    order = {"attention": 0, "lstm": 1, "gru": 2}
    models = sorted({(order.get(n["arch"], 3), n["arch"], n["width"], n["model"]) for n in needs})
    mlps = [m for m in models if m[1] not in FAMILY_STYLE]
    shades = plt.cm.viridis(np.linspace(0.85, 0.05, max(len(mlps), 1)))
    styles: dict[str, tuple[Any, str]] = {}
    taken: dict[str, int] = defaultdict(int)
    for entry in models:
        if entry[1] in FAMILY_STYLE:
            colours, marker = FAMILY_STYLE[entry[1]]
            styles[entry[3]] = (colours[taken[entry[1]] % len(colours)], marker)
            taken[entry[1]] += 1
        else:
            styles[entry[3]] = (shades[mlps.index(entry)], "s")
    return styles


def plot_width_needs(width_rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Smallest width reaching 1/(2q), against q (one line per N) and against N (one line per q),
    with 95% intervals over seeds; open triangles are censored."""
    rows = [r for r in width_rows if "q" in r and "N" in r]
    if not rows:
        raise ValueError(
            "no qSA width runs to plot; run the qsa-width-grid sweep into this store first"
        )
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.9))
    for ax, (line_key, x_key) in ((left, ("N", "q")), (right, ("q", "N"))):
        for index, value in enumerate(sorted({r[line_key] for r in rows})):
            line = sorted((r for r in rows if r[line_key] == value), key=lambda r: r[x_key])
            shift = 1 + 0.03 * index  # coinciding lines stay visible
            _need_errorbar(
                ax,
                [r[x_key] * shift for r in line],
                [{"need": r} for r in line],
                "need",
                f"C{index % 10}",
                f"{line_key} = {value}",
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(x_key)
        ax.set_ylabel("smallest width m reaching 1/(2q)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    left.set_title("width vs q", fontsize=10)
    right.set_title("width vs N", fontsize=10)
    return _save(fig, path)


def plot_curves(curves: dict[str, dict[str, list[float]]], path: str | Path) -> Path:
    """Training curves (validation loss solid, training loss dotted, against the step), one line
    per labelled run, and the learning rate on a second panel."""
    if not curves:
        raise ValueError("no training curves to plot")
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for index, (label, curve) in enumerate(curves.items()):
        colour = f"C{index % 10}"
        loss_ax.plot(curve["step"], curve["val_loss"], "-", color=colour, label=label)
        loss_ax.plot(curve["step"], curve["train_loss"], ":", color=colour, alpha=0.7)
        lr_ax.plot(curve["step"], curve["lr"], "-", color=colour)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("step")
    loss_ax.set_ylabel("loss (validation solid, training dotted)")
    loss_ax.legend(fontsize=7)
    lr_ax.set_yscale("log")
    lr_ax.set_xlabel("step")
    lr_ax.set_ylabel("learning rate")
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_attention_pattern(weights, pointers, path: str | Path, title: str = "") -> Path:
    """Row i: where token i looks (one head, one input), with the positions y_i of the qSA
    target marked; a head that solves qSA puts its weight on exactly those."""
    import numpy as np

    weights = np.asarray(weights)
    N = weights.shape[0]
    fig, ax = plt.subplots(figsize=(6.4, 5.0))
    image = ax.imshow(weights, cmap="viridis", vmin=0, vmax=max(float(weights.max()), 1e-12))
    rows, cols = np.nonzero(np.asarray(pointers))
    ax.scatter(
        cols, rows, s=60, facecolors="none", edgecolors="red", linewidths=1.0, label="j in y_i"
    )
    ax.set_xlabel("key position j")
    ax.set_ylabel("query position i")
    ax.set_title(title or f"trained head on one qSA input (N = {N})", fontsize=8, wrap=True)
    ax.legend(loc="upper right", fontsize=7, framealpha=0.8)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return _save(fig, path)


def _save(fig, path: str | Path, layout: bool = True) -> Path:
    """Write `fig` as a PNG at `path` (making its folder) and free it; `layout=False` keeps a
    layout the caller made (e.g. room left for a figure legend)."""
    if layout:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
