"""Noisy single-head extraction: the paper's estimator (Thm 6.1) against the robust one, fairly.

    python benchmarks/noisy.py            # d in {16, 32, 64}, 3 targets per cell (a few minutes)
    python benchmarks/noisy.py --quick    # d = 12, 1 target per cell (seconds)

Targets: W entries N(0, 1/d); v either N(0, 1) entries ("gaussian v") or +-1 entries ("+-1 v",
every |v_i| = 1: the margin the paper's estimator needs, its best case).

The paper's estimator (probes [(e_i / B + e_j / 2); e_j / 2]) only needs |W_ij| <= B, and its W
error grows like B^2, so the bound it is handed decides the comparison. It is run with
  - B = max_ij |W_ij| ("tight": the smallest bound its proof allows; an oracle's knowledge),
  - B = sqrt(2 ln(2 d^2 / 0.01) / d) ("a priori": what a user who knows the entry scale 1/sqrt(d)
    can promise; it holds with probability >= 99% for N(0, 1/d) entries),
  - B = ||W||_F (what the previous version of this benchmark used; kept to show the effect).
A smaller B also means larger probe tokens (norm sqrt(1/B^2 + 1/4)), and token size is a resource
against absolute noise, so the robust estimator (which needs no bound) is run twice: at its default
max_token_norm = 1 and at the paper's largest token norm in the same row ("matched"). The headline
ratio is paper(tight) / robust(matched): the best bound for the paper, equal queries, equal tokens.

The robust estimator uses offset probes (src/attnlab/extract/noisy_robust.py): each probe's answer is
(alpha - alpha_bar) g, near zero, so answers rounded to k significant digits (a step proportional to
|answer|) cost little; the "rounding" section below measures the answers of both estimators.

Errors are Frobenius norms of W_hat - W, geometric means over the targets; ratio > 1 means the robust
estimator's error is lower. Writes benchmarks/results/noisy.md and noisy_ratios.png (quick:
*_quick.*).
"""

from __future__ import annotations

import os

os.environ.setdefault(
    "OPENBLAS_NUM_THREADS", "1"
)  # small solves: threads only contend on a shared machine
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from attnlab import ExtractionError  # noqa: E402
from attnlab.evaluate.recipes import noisy_head_row  # noqa: E402
from attnlab.models import SingleHeadAttention  # noqa: E402
from attnlab.oracle.noise import (  # noqa: E402
    AdversarialNoise,
    BoundedNoise,
    GaussianNoise,
    RoundDigits,
    RoundFloat32,
)

RESULTS = Path(__file__).resolve().parent / "results"
A_PRIORI_FAILURE = 0.01  # the a priori bound may be violated with at most this probability
NOISES = {
    "gaussian 1e-8": lambda head: GaussianNoise(1e-8),
    "gaussian 1e-6": lambda head: GaussianNoise(1e-6),
    "gaussian 1e-4": lambda head: GaussianNoise(1e-4),
    "bounded 1e-6": lambda head: BoundedNoise(1e-6),
    "adversarial 1e-6": lambda head: AdversarialNoise(1e-6, target=head),
    "6 digits": lambda head: RoundDigits(6),
    "4 digits": lambda head: RoundDigits(4),
    "3 digits": lambda head: RoundDigits(3),
}
VALUES = ("gaussian v", "+-1 v")
PAPER_BOUNDS = ("tight", "a priori", "frobenius")
ESTIMATORS = (
    *(f"paper {b}" for b in PAPER_BOUNDS),
    "robust R=1",
    "robust matched",
    "robust matched a priori",
)


def target(d: int, values: str, seed: int):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((d, d)) / math.sqrt(d)
    v = rng.standard_normal(d) if values == "gaussian v" else rng.choice([-1.0, 1.0], size=d)
    return SingleHeadAttention(W, v), W


def paper_bound(kind: str, W: np.ndarray) -> float:
    d = W.shape[0]
    if kind == "tight":
        return float(np.max(np.abs(W)))
    if kind == "a priori":  # union bound over d^2 Gaussian entries of standard deviation 1/sqrt(d)
        return math.sqrt(2.0 * math.log(2.0 * d * d / A_PRIORI_FAILURE) / d)
    return float(np.linalg.norm(W))


def paper_token_norm(B: float) -> float:
    """The largest token the paper's estimator sends with bound B (value tokens e_i have norm 1)."""
    return max(1.0, math.hypot(1.0 / B, 0.5))


def run_estimator(name: str, head, W, noise, seed: int, factor: int = 1):
    """W Frobenius error (None if the extractor refused) and queries, for one estimator."""
    d = W.shape[0]
    if name.startswith("paper"):
        options = {"B": paper_bound(name.split(" ", 1)[1], W), "repeats": factor}
    else:
        if name == "robust R=1":
            R = 1.0
        else:  # the largest token the paper's estimator sends with the tight (or a priori) bound
            R = paper_token_norm(paper_bound("a priori" if "a priori" in name else "tight", W))
        options = {"queries": factor * (d * d + d), "max_token_norm": R}
    method = "paper" if name.startswith("paper") else "robust"
    try:
        row = noisy_head_row(head, noise, method, seed=seed, oracle_seed=seed + 1000, **options)
    except ExtractionError:
        return None, None
    return row["W_fro_error"], row["queries"]


def geo(values):
    if not values or any(x is None for x in values):
        return None  # a refusal on any target makes the cell "refused"
    return float(np.exp(np.mean(np.log(np.maximum(values, 1e-300)))))


def fmt(x):
    return "refused" if x is None else f"{x:.2e}"


def ratio(p, r):
    if p is None or r is None:
        return "-"
    value = p / r
    return f"{value:.0f}x" if value >= 10 else f"{value:.2f}x"


def equal_query_grid(ds, seeds):
    cells = []
    for d in ds:
        for values in VALUES:
            for noise_name, make in NOISES.items():
                errors, queries = {}, {}
                for name in ESTIMATORS:
                    outs = []
                    for s in seeds:
                        head, W = target(d, values, s)
                        err, q = run_estimator(name, head, W, make(head), s)
                        outs.append(err)
                        queries.setdefault(name, q)
                    errors[name] = geo(outs)
                cells.append(
                    {"d": d, "values": values, "noise": noise_name, "errors": errors, "q": queries}
                )
    return cells


def grid_rows(cells):
    rows = []
    for c in cells:
        e = c["errors"]
        q = c["q"]["robust matched"] or c["q"]["paper tight"] or c["d"] ** 2 + c["d"]
        rows.append(
            f"| {c['d']} | {c['values']} | {c['noise']} | {q} | "
            + " | ".join(fmt(e[name]) for name in ESTIMATORS)
            + f" | **{ratio(e['paper tight'], e['robust matched'])}** | "
            f"{ratio(e['paper a priori'], e['robust matched a priori'])} | "
            f"{ratio(e['paper tight'], e['robust R=1'])} | "
            f"{ratio(e['paper frobenius'], e['robust R=1'])} |"
        )
    return rows


def query_sweep(d, seeds, factors):
    rows = []
    cases = {"gaussian 1e-6": NOISES["gaussian 1e-6"], "6 digits": NOISES["6 digits"]}
    for values in VALUES:
        for noise_name, make in cases.items():
            for f in factors:
                errs = {}
                for name in ("paper tight", "robust matched"):
                    outs = []
                    for s in seeds:
                        head, W = target(d, values, s)
                        outs.append(run_estimator(name, head, W, make(head), s, factor=f)[0])
                    errs[name] = geo(outs)
                rows.append(
                    f"| {values} | {noise_name} | {f * (d * d + d)} | {fmt(errs['paper tight'])} | "
                    f"{fmt(errs['robust matched'])} | {ratio(errs['paper tight'], errs['robust matched'])} |"
                )
    return rows


def float32_rows(d, seeds):
    rows = []
    for values in VALUES:
        errs = {}
        for name in ("paper tight", "robust R=1", "robust matched"):
            outs = []
            for s in seeds:
                head, W = target(d, values, s)
                err, _ = run_estimator(name, head, W, RoundFloat32(), s)
                outs.append(None if err is None else err / float(np.linalg.norm(W)))
            errs[name] = geo(outs)
        rows.append(
            f"| {values} | {d} | {d * d + d} | "
            + " | ".join(fmt(errs[n]) for n in ("paper tight", "robust R=1", "robust matched"))
            + f" | {ratio(errs['paper tight'], errs['robust matched'])} |"
        )
    return rows


class _RecordingRound(RoundDigits):
    """RoundDigits that keeps the two-token (W probe) queries with their exact and rounded answers."""

    def __call__(self, y, X, rng):
        out = super().__call__(y, X, rng)
        if np.shape(X)[1] == 2:
            self.log.append((np.asarray(y, dtype=np.float64).ravel(), out.ravel(), np.array(X)))
        return out


def rounding_rows(d, seeds, digits=6):
    """Why rounding favours whoever answers near zero: |y| and the rounding error of the W probes."""
    from attnlab import Oracle
    from attnlab.extract.noisy import noisy_single_head

    rows = []
    for name in ("paper a priori", "robust matched a priori"):
        ys, errs, per_signal, w_errs = [], [], [], []
        for s in seeds:
            head, W = target(d, "+-1 v", s)
            v = head.v.detach().numpy().ravel()
            B = paper_bound("a priori", W)
            noise = _RecordingRound(digits)
            noise.log = []
            if name.startswith("paper"):
                method, options = "paper", {"B": B}
            else:
                method, options = "robust", {"max_token_norm": paper_token_norm(B)}
            oracle = Oracle(head, noise=noise, seed=s + 1000)
            ex = noisy_single_head(oracle, method=method, method_options=options, seed=s)
            w_errs.append(float(np.linalg.norm(ex.W - W)))
            for y, rounded, X in noise.log:
                ys.append(np.abs(y))
                errs.append(rounded - y)
                per_signal.append((rounded - y) / ((X[:, 0] - X[:, 1]) @ v))
        a, e, r = np.concatenate(ys), np.concatenate(errs), np.concatenate(per_signal)
        rows.append(
            f"| {name} | {fmt(geo(w_errs))} | {np.median(a):.3f} | {np.mean(a >= 1):.2f} | "
            f"{np.mean(a < 0.1):.2f} | {np.sqrt(np.mean(e**2)):.2e} | {np.sqrt(np.mean(r**2)):.2e} |"
        )
    return rows


def plot(cells, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = sorted({c["d"] for c in cells})
    fig, axes = plt.subplots(1, len(VALUES), figsize=(12, 4.5), sharey=True)
    names = list(NOISES)
    width = 0.8 / len(ds)
    for ax, values in zip(np.atleast_1d(axes), VALUES, strict=True):
        for k, d in enumerate(ds):
            heights = []
            for noise_name in names:
                (c,) = [
                    c
                    for c in cells
                    if c["d"] == d and c["values"] == values and c["noise"] == noise_name
                ]
                p, r = c["errors"]["paper tight"], c["errors"]["robust matched"]
                heights.append(np.nan if p is None or r is None else p / r)
            ax.bar(
                np.arange(len(names)) + (k - (len(ds) - 1) / 2) * width,
                heights,
                width,
                label=f"d = {d}",
            )
        ax.axhline(1.0, color="black", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(np.arange(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{values}: paper (B = max|W_ij|) / robust (matched tokens)")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("W error ratio (> 1: robust better)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def summary(cells):
    """Per (values, d): the range of each comparison's ratio and the settings where the paper wins."""
    pairs = {
        "tight / matched": ("paper tight", "robust matched"),
        "a priori / matched a priori": ("paper a priori", "robust matched a priori"),
        "tight / R=1": ("paper tight", "robust R=1"),
    }
    lines = []
    for values in VALUES:
        for d in sorted({c["d"] for c in cells}):
            spans, losses, refusals = [], [], []
            group = [c for c in cells if c["d"] == d and c["values"] == values]
            for label, (p_name, r_name) in pairs.items():
                ratios = []
                for c in group:
                    p, r = c["errors"][p_name], c["errors"][r_name]
                    if p is None or r is None:
                        if label == "tight / matched":
                            refusals.append(f"{c['noise']} (paper {fmt(p)}, robust {fmt(r)})")
                        continue
                    ratios.append(p / r)
                    if p / r < 1:
                        losses.append(f"{label}: {c['noise']} {p / r:.2f}x")
                spans.append(
                    f"{ratio(min(ratios), 1.0)} to {ratio(max(ratios), 1.0)}" if ratios else "-"
                )
            lines.append(
                f"| {values} | {d} | {' | '.join(spans)} | {'; '.join(losses) or 'none'} | "
                f"{', '.join(refusals) or 'none'} |"
            )
    return lines


def nuclear_rows(cases):
    """The Thm 5.1 path (method="nuclear-norm", rank found) on low-rank heads; peak memory from tracemalloc."""
    import tracemalloc

    rows = []
    for d, r in cases:
        head = SingleHeadAttention.random(d, rank=r, scale=1 / math.sqrt(d), seed=1)
        W = head.W.detach().numpy()
        m = 2 * r * 2 * d
        for name, noise in (("exact", None), ("gaussian 1e-6", GaussianNoise(1e-6))):
            tracemalloc.start()
            started = time.perf_counter()
            ex = noisy_head_extraction(head, noise, m)
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            free = r * (2 * d - r) + d
            rows.append(
                f"| {d} | {r} | {name} | {ex.queries} | {ex.queries / free:.2f} | {ex.info['rank_found']} | "
                f"{np.linalg.norm(ex.W - W) / np.linalg.norm(W):.1e} | {peak / 2**20:.0f} MiB | "
                f"{m * m * 8 / 2**30:.1f} GiB | {seconds:.0f} |"
            )
            print(rows[-1], flush=True)
    return rows


def noisy_head_extraction(head, noise, measurements):
    from attnlab.extract.noisy import noisy_single_head
    from attnlab.oracle import Oracle

    return noisy_single_head(
        Oracle(head, noise=noise, seed=2),
        method="nuclear-norm",
        method_options={"measurements": measurements},
    )


def nuclear_main(quick: bool) -> int:
    cases = [(24, 2)] if quick else [(64, 4), (128, 8), (384, 32)]
    start = time.perf_counter()
    rows = nuclear_rows(cases)
    suffix = "_quick" if quick else ""
    text = "\n".join(
        [
            "# Thm 5.1 path: noisy_single_head(method='nuclear-norm'), matrix-free",
            "",
            f"`nice -n 10 python benchmarks/noisy.py --nuclear{' --quick' if quick else ''}`, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - start:.0f} s on a "
            "shared, loaded 2-core machine (one thread; times indicative). Heads: W of rank r with entries of "
            "scale 1/sqrt(d), v N(0, 1); m = 2 r (2d) Gaussian rank-one probes plus d value queries; rank not "
            "given (found by the residual test). Free parameters r (2d - r) + d. Peak memory is Python-side "
            "allocations (tracemalloc, numpy arrays included); 'Gram would be' is the m x m matrix the "
            "constrained ADMM solver in single_head.lowrank factors.",
            "",
            "| d | r | answers | queries | queries / free params | rank found | rel err W | peak memory | "
            "Gram would be | s |",
            "|---|---|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    (RESULTS / f"noisy_nuclear{suffix}.md").write_text(text + "\n")
    print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--nuclear", action="store_true", help="the Thm 5.1 path at d up to 384 (noisy_nuclear.md)"
    )
    args = parser.parse_args()
    if args.nuclear:
        return nuclear_main(args.quick)
    torch.set_num_threads(1)
    ds = [12] if args.quick else [16, 32, 64]
    seeds = [0] if args.quick else [0, 1, 2]
    factors = [1, 4] if args.quick else [1, 4, 16]
    sweep_d = 12 if args.quick else 32
    start = time.perf_counter()
    cells = equal_query_grid(ds, seeds)
    q_rows = query_sweep(sweep_d, seeds, factors)
    f32_d = 16 if args.quick else 64
    f32_rows = float32_rows(f32_d, seeds)
    round_d = 12 if args.quick else 16
    round_rows = rounding_rows(round_d, seeds)
    suffix = "_quick" if args.quick else ""
    png = RESULTS / f"noisy_ratios{suffix}.png"
    RESULTS.mkdir(exist_ok=True)
    plot(cells, png)
    (RESULTS / f"noisy{suffix}.json").write_text(json.dumps(cells, indent=1))
    lines = [
        f"# Noisy single-head extraction: paper (Thm 6.1) vs robust, fair bounds{' (quick)' if args.quick else ''}",
        "",
        f"`nice -n 10 python benchmarks/noisy.py{' --quick' if args.quick else ''}` on {platform.machine()}, "
        f"Python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - start:.0f} s "
        "(shared, loaded machine; only errors and query counts are reported, not times). "
        f"Targets: W entries N(0, 1/d); v N(0, 1) ('gaussian v') or +-1 ('+-1 v'); seeds {seeds}, "
        "geometric means of ||W_hat - W||_F; a cell is 'refused' if the extractor raised "
        "ExtractionError on any target.",
        "",
        "The paper's estimator only needs |W_ij| <= B and its W error grows like B^2: **paper tight** "
        "gets B = max |W_ij| (the smallest bound its proof allows, which only someone who knows W has), "
        f"**paper a priori** B = sqrt(2 ln(2 d^2 / {A_PRIORI_FAILURE:g}) / d) (what a user knowing the "
        f"entry scale 1/sqrt(d) can promise; fails with probability <= {A_PRIORI_FAILURE:g}), **paper "
        "frobenius** B = ||W||_F (the previous benchmark's choice, which overstated the gap). Its "
        "probe tokens have norm sqrt(1/B^2 + 1/4) (> 1 for the tight bound), so the robust estimator, "
        "which needs no bound, runs at max_token_norm 1 (**robust R=1**, the library default) and at "
        "the paper's tight-bound token norm (**robust matched**: equal queries, equal largest token), "
        "and at the a priori bound's token norm (**robust matched a priori**).",
        "",
        "## Summary: ratio ranges over the noise settings, d^2 + d queries each",
        "",
        "| values | d | tight / matched | a priori / matched a priori | tight / R=1 | "
        "settings where the paper's estimator wins | refused (either) |",
        "|---|---|---|---|---|---|---|",
        *summary(cells),
        "",
        "## Every setting, equal queries (d^2 + d)",
        "",
        "Ratios are paper error / robust error (> 1: robust lower). Bold: the headline comparison.",
        "",
        "| d | values | noise | queries | "
        + " | ".join(f"{n} W err" for n in ESTIMATORS)
        + " | tight / matched | a priori / matched a priori | tight / R=1 | frobenius / R=1 (old) |",
        "|---|---|---|---|" + "---|" * (len(ESTIMATORS) + 4),
        *grid_rows(cells),
        "",
        f"## Error against queries, d = {sweep_d} (paper tight: every probe repeated and averaged; robust "
        "matched: more rows and value designs, exact repeats only for random noise)",
        "",
        "Rounding is deterministic, so the paper's repeats return the same answers and cannot help it.",
        "",
        "| values | noise | queries | paper tight W err | robust matched W err | paper / robust |",
        "|---|---|---|---|---|---|",
        *q_rows,
        "",
        f"## float32-rounded answers, d = {f32_d} (relative Frobenius error of W, geometric mean)",
        "",
        "| values | d | queries | paper tight | robust R=1 | robust matched | paper / matched |",
        "|---|---|---|---|---|---|---|",
        *f32_rows,
        "",
        f"## Rounding to 6 digits, d = {round_d}, +-1 v: the answers of the W probes",
        "",
        "Rounding to k significant digits has a step of 10^(ceil(log10 |y|) - k): ten times coarser "
        "for an answer of 1.2 than for one of 0.99, and finer still near zero. With +-1 values at "
        "d = 16 the paper's probes answer v_j / 2 + alpha v_i / B: with the a priori bound (B = 1.16) "
        "every answer stays below 1 and when v_i = -v_j it nearly cancels. That, not its estimator, "
        "is why it won this setting 10x before offset probes: the robust probes of that version "
        "(commit e6031f9) answered alpha a^T v + b^T v, median |y| 1.18 with 65% of the answers "
        "at or above 1, an rms rounding error of 2.3e-6 (the paper's: 2.2e-7) and W error 3.6e-4. "
        "Offset probes answer (alpha - alpha_bar) a^T v. Last column: the rounding error over "
        "|dy/dalpha|, the error it puts on alpha.",
        "",
        "| estimator | W err | median abs(y) | share abs(y) >= 1 | share abs(y) < 0.1 | "
        "rms rounding error | rms error / abs(dy/dalpha) |",
        "|---|---|---|---|---|---|---|",
        *round_rows,
        "",
        f"Figure: `{png.name}` (the headline ratio per setting). Raw cells: `noisy{suffix}.json`.",
    ]
    text = "\n".join(lines) + "\n"
    (RESULTS / f"noisy{suffix}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
