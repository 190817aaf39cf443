"""Small matplotlib helpers shared by the report's claims (Agg backend, PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def line_plot(
    path: Path,
    series: dict[str, tuple[list, list]],
    xlabel: str,
    ylabel: str,
    title: str,
    logx: bool = False,
    logy: bool = False,
    markers: bool = True,
) -> str:
    """Plot named (x, y) series to `path`; return the file name for the report."""
    # drawn at the report's full width (1100 px of page), so it is not upscaled there
    fig, ax = plt.subplots(figsize=(10.0, 4.6), dpi=120)
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o" if markers else None, label=name)
    ax.set_xscale("log" if logx else "linear")
    ax.set_yscale("log" if logy else "linear")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path.name
