"""Benchmark the canonical multi-head learner: failure counts, queries and accuracy per target family.

    nice -n 10 python benchmarks/multihead.py                  # every section (long: see --budget)
    python benchmarks/multihead.py --quick                     # a few targets per cell (a minute)
    python benchmarks/multihead.py --sections random --per-cell 50 --budget 1200

Writes benchmarks/results/multihead.md (the quick run: multihead_quick.md) and a .json beside it.
Every figure is measured in this run. Sections:
  random, near-parallel, unequal-scale, unequal-rank: `multi_head(heads=H)` on targets of that
      family (models.multihead.random_family_params); per (H, d) cell: targets run, recovered
      (canonical error <= 1e-8), inexact (returned, error > 1e-8), raised (ExtractionError), with
      queries / free parameters H(d^2 + d) and / the published 4Hd^2 - 2H + 1 (arXiv 2608.03294);
  outside: targets outside the model (more heads than allowed, noisy answers): must raise;
  affine: PyTorch's own nn.MultiheadAttention(bias=True), multi_head(affine=True);
  lowrank: heads of rank r at (d, H, r), multi_head(rank=r), queries vs H(2rd - r^2 + d).
A cell stops early when the time budget is spent; the tables say how many targets ran.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.multihead import MAX_HEADS, canonical_dof, multi_head, published_query_bound
from attnlab.models.canonical import MultiHeadParams, canonical_error
from attnlab.models.multihead import MultiheadAttentionReadout, random_family_params
from attnlab.oracle import Oracle
from attnlab.oracle.noise import GaussianNoise

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXACT = 1e-8
FAMILY_GRID = {
    "random": [(H, d) for H in (1, 2, 3, 4) for d in (2, 3, 4, 8, 16)],
    "near-parallel": [(H, d) for H in (2, 3, 4) for d in (3, 4, 8, 16)],
    "unequal-scale": [(H, d) for H in (2, 3, 4) for d in (3, 4, 8, 16)],
    "unequal-rank": [(H, d) for H in (2, 3, 4) for d in (3, 4, 8, 16)],
}
LOWRANK = [(64, 4, 8), (128, 4, 16), (384, 12, 32)]


def lowrank_dof(d: int, H: int, r: int) -> int:
    return H * (2 * r * d - r * r + d)


def attempt(
    target, d: int, heads: int, truth: MultiHeadParams, seed: int, keep_info=False, **kwargs
) -> dict:
    start = time.perf_counter()
    try:
        result = multi_head(
            Oracle(target, d=d), heads=heads, seed=seed, fidelity_samples=0, **kwargs
        )
    except ExtractionError as error:
        return {
            "outcome": "raised",
            "message": str(error)[:160],
            "seconds": time.perf_counter() - start,
        }
    error = canonical_error(result.surrogate, truth)
    extra = {}
    if keep_info:
        extra = {
            key: result.info.get(key, 0) for key in ("isolated_directions", "misread_directions")
        }
    return {
        **extra,
        "outcome": "recovered" if error <= EXACT else "inexact",
        "error": error,
        "queries": result.queries,
        "rejected": result.stages.get("rejected", 0),
        "framed": bool(result.info.get("frames", False)),
        "seconds": time.perf_counter() - start,
    }


def family_cell(family: str, H: int, d: int, n: int, deadline: float) -> dict:
    rows = []
    for k in range(n):
        if time.perf_counter() > deadline:
            break
        seed = 100_000 * H + 1000 * d + k
        W, v = random_family_params(family, d, H, seed=seed)
        truth = MultiHeadParams(W, v)
        rows.append({"seed": seed, **attempt(truth, d, H, truth, seed=seed + 1)})
    return summarise(rows, canonical_dof(H, d), published_query_bound(H, d), planned=n)


def summarise(rows: list[dict], dof: int, bound: int, planned: int) -> dict:
    done = [r for r in rows if "queries" in r]
    count = {k: sum(r["outcome"] == k for r in rows) for k in ("recovered", "inexact", "raised")}
    queries = [r["queries"] for r in done]
    return {
        "planned": planned,
        "ran": len(rows),
        **count,
        "framed": sum(r.get("framed", False) for r in done),
        "queries_mean": float(np.mean(queries)) if queries else None,
        "queries_max": int(np.max(queries)) if queries else None,
        "per_dof": float(np.mean(queries)) / dof if queries else None,
        "per_bound": float(np.mean(queries)) / bound if queries else None,
        "max_error": max((r["error"] for r in done), default=None),
        "median_seconds": float(np.median([r["seconds"] for r in rows])) if rows else None,
        "failures": [
            {k: r[k] for k in ("seed", "outcome", "message", "error") if k in r}
            for r in rows
            if r["outcome"] != "recovered"
        ][:5],
    }


def outside_rows(n: int) -> list[dict]:
    """Targets outside the model: the learner must raise (a silent wrong answer counts as a failure)."""
    cases = []
    for k in range(n):
        W, v = random_family_params("random", 4, 3, seed=7000 + k)
        target = MultiHeadParams(W, v)
        cases.append(
            ("3 heads, heads=2", target, {"heads": 2, "method_options": {"check_queries": 2}})
        )
        cases.append(("3 heads, max_heads=2", target, {"max_heads": 2}))
        noisy = Oracle(target, d=4, noise=GaussianNoise(1e-6), seed=k)
        cases.append(
            (
                "Gaussian noise 1e-6, heads=3",
                noisy,
                {"heads": 3, "method_options": {"check_queries": 2}},
            )
        )
    table: dict[str, dict] = {}
    for name, target, kwargs in cases:
        row = table.setdefault(name, {"ran": 0, "raised": 0, "returned": 0})
        row["ran"] += 1
        oracle = target if isinstance(target, Oracle) else Oracle(target, d=4)
        try:
            multi_head(oracle, fidelity_samples=0, **kwargs)
            row["returned"] += 1
        except ExtractionError:
            row["raised"] += 1
    return [{"case": name, **row} for name, row in table.items()]


def affine_rows(shapes, seeds: int) -> list[dict]:
    rows = []
    for d, H in shapes:
        results = []
        for seed in range(seeds):
            module = MultiheadAttentionReadout.random(d, H, bias=True, seed=seed)
            truth = MultiHeadParams(**module.canonical_parameters())
            results.append({"seed": seed, **attempt(module, d, H, truth, seed=seed, affine=True)})
        rows.append(
            {
                "d": d,
                "H": H,
                **summarise(
                    results,
                    canonical_dof(H, d, affine=True),
                    published_query_bound(H, d),
                    planned=seeds,
                ),
            }
        )
    return rows


def lowrank_modes(text: str) -> tuple[bool, ...]:
    """--lowrank-modes "off,on" as isolate flags; any other word is an error, not "off"."""
    words = [word.strip() for word in text.split(",")]
    if not words or any(word not in ("off", "on") for word in words):
        raise SystemExit(f"--lowrank-modes takes off and/or on, comma-separated; got {text!r}")
    return tuple(word == "on" for word in words)


def lowrank_rows(configs, deadline: float, seeds: int, modes=(False, True)) -> list[dict]:
    """`seeds` targets per (d, H, r), each read by default and (modes) with isolate=True."""
    rows = []
    for d, H, r in configs:
        for seed in range(seeds):
            for isolate in modes:
                row = {
                    "d": d,
                    "H": H,
                    "r": r,
                    "seed": seed,
                    "isolate": "on" if isolate else "off",
                    "dof_lowrank": lowrank_dof(d, H, r),
                    "dof_full": canonical_dof(H, d),
                }
                rows.append(row)
                if H > MAX_HEADS:
                    row["status"] = (
                        f"not run: H = {H} > MAX_HEADS = {MAX_HEADS} (degree-2H rational fits in float64)"
                    )
                    break
                if time.perf_counter() > deadline:
                    row["status"] = "not run: time budget spent"
                    continue
                # seed 0 is the one target earlier tables used
                rng = np.random.default_rng(d + H + r + 1000 * seed)
                W = np.stack(
                    [
                        rng.standard_normal((d, r)) @ rng.standard_normal((r, d)) / np.sqrt(r * d)
                        for _ in range(H)
                    ]
                )
                truth = MultiHeadParams(W, rng.standard_normal((H, d)))
                got = attempt(
                    truth,
                    d,
                    H,
                    truth,
                    seed=1 + seed,
                    rank=r,
                    method_options={"isolate": isolate},
                    keep_info=True,
                )
                row.update(got)
                if "queries" in got:
                    row["per_dof_lowrank"] = got["queries"] / row["dof_lowrank"]
                row["status"] = got["outcome"]
                print(row, flush=True)
            if H > MAX_HEADS:
                break
    return rows


def fmt(x, spec=".2f"):
    return "-" if x is None else format(x, spec)


def markdown(report: dict, command: str) -> str:
    lines = [
        "# Multi-head learner: failure counts, queries, accuracy",
        "",
        f"`{command}` on {platform.machine()}, {report['date']}; {report['seconds']:.0f} s in all. "
        f"Recovered = canonical error <= {EXACT:g} (heads matched by permutation); inexact = returned "
        "with a larger error; raised = ExtractionError; framed = returned targets read in frames "
        "orthogonal to each direction's common row (nearly parallel heads, "
        "extract/multihead/common.py). Queries exclude fidelity checks.",
        "",
    ]
    for family, cells in report.get("families", {}).items():
        total = {
            k: sum(c[k] for c in cells)
            for k in ("planned", "ran", "recovered", "inexact", "raised")
        }
        lines += [
            f"## Family `{family}`: {total['ran']} of {total['planned']} targets ran, "
            f"{total['inexact'] + total['raised']} failures "
            f"({total['inexact']} inexact, {total['raised']} raised)",
            "",
            "| H | d | ran | recovered | inexact | raised | framed | mean queries | / H(d²+d) "
            "| / (4Hd²-2H+1) | max error | median s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in cells:
            lines.append(
                f"| {c['H']} | {c['d']} | {c['ran']}/{c['planned']} | {c['recovered']} | {c['inexact']} "
                f"| {c['raised']} | {c.get('framed', '-')} | {fmt(c['queries_mean'], '.0f')} "
                f"| {fmt(c['per_dof'])} "
                f"| {fmt(c['per_bound'])} | {fmt(c['max_error'], '.1e')} | {fmt(c['median_seconds'])} |"
            )
        fails = [f for c in cells for f in c["failures"]]
        if fails:
            lines += [
                "",
                "First failures: "
                + "; ".join(
                    f"seed {f['seed']}: {f['outcome']} {f.get('message', '') or fmt(f.get('error'), '.1e')}"
                    for f in fails[:6]
                ),
            ]
        lines.append("")
    if "outside" in report:
        lines += [
            "## Targets outside the model (must raise)",
            "",
            "| case | ran | raised | returned |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| {r['case']} | {r['ran']} | {r['raised']} | {r['returned']} |"
            for r in report["outside"]
        ]
        lines.append("")
    if "affine" in report:
        lines += [
            "## Affine heads: PyTorch nn.MultiheadAttention(bias=True), multi_head(affine=True)",
            "",
            "| d | H | ran | recovered | failures | mean queries | / (H(d²+2d)+1) | max error | median s |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in report["affine"]:
            lines.append(
                f"| {r['d']} | {r['H']} | {r['ran']} | {r['recovered']} | {r['inexact'] + r['raised']} "
                f"| {fmt(r['queries_mean'], '.0f')} | {fmt(r['per_dof'])} | {fmt(r['max_error'], '.1e')} "
                f"| {fmt(r['median_seconds'])} |"
            )
        lines.append("")
    if "lowrank" in report:
        rows = report["lowrank"]
        lines += [
            "## Low-rank heads at scale: multi_head(rank=r)",
            "",
            (
                "Each target read twice: by default (isolate off) and with isolate on (directions "
                "after those read in full, one head at a time, extract/multihead/isolated.py). "
                if {x["isolate"] for x in rows} == {"off", "on"}
                else f"Each target read with isolate {rows[0]['isolate']} only (--lowrank-modes). "
            )
            + "iso = directions read isolated; misread = directions replaced because their columns "
            "broke the heads' rank.",
            "",
        ]
        for d, H, r in dict.fromkeys((x["d"], x["H"], x["r"]) for x in rows):
            cell = [x for x in rows if (x["d"], x["H"], x["r"]) == (d, H, r)]
            for mode in ("off", "on"):
                ran = [x for x in cell if x["isolate"] == mode and "outcome" in x]
                bad = [x for x in ran if x["outcome"] != "recovered"]
                if ran:
                    lines.append(
                        f"- ({d}, {H}, {r}), isolate {mode}: {len(ran)} targets, {len(bad)} failures "
                        f"({sum(x['outcome'] == 'inexact' for x in bad)} inexact, "
                        f"{sum(x['outcome'] == 'raised' for x in bad)} raised)"
                    )
        lines += [
            "",
            "| d | H | r | target | isolate | H(2rd-r²+d) | H(d²+d) | queries | / low-rank dof "
            "| error | iso | misread | s | status |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r['d']} | {r['H']} | {r['r']} | {r['seed']} | {r['isolate']} | {r['dof_lowrank']} "
                f"| {r['dof_full']} | {r.get('queries', '-')} | {fmt(r.get('per_dof_lowrank'))} "
                f"| {fmt(r.get('error'), '.1e')} | {r.get('isolated_directions', '-')} "
                f"| {r.get('misread_directions', '-')} "
                f"| {fmt(r.get('seconds'), '.0f')} | {r['status']} |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 targets per cell, small affine/outside sets"
    )
    parser.add_argument(
        "--random-per-cell",
        type=int,
        default=50,
        help="random family: targets per (H, d) cell (default 50: 1,000 targets)",
    )
    parser.add_argument(
        "--per-cell",
        type=int,
        default=9,
        help="other families: targets per (H, d) cell (default 9: 108 each)",
    )
    parser.add_argument(
        "--lowrank-seeds",
        type=int,
        default=3,
        help="lowrank: targets per (d, H, r), each read in the --lowrank-modes (default 3)",
    )
    parser.add_argument(
        "--lowrank-modes",
        default="off,on",
        help="lowrank: isolate settings to read each target with, comma-separated (default off,on)",
    )
    parser.add_argument(
        "--random-grid",
        default=None,
        help="random family: (H, d) cells as HxD, comma-separated (default H 1-4 x d 2,3,4,8,16)",
    )
    parser.add_argument(
        "--lowrank-configs",
        default=None,
        help="lowrank: (d, H, r) as dxHxr, comma-separated (default 64x4x8,128x4x16,384x12x32)",
    )
    parser.add_argument(
        "--sections",
        default="random,near-parallel,unequal-scale,unequal-rank,outside,affine,lowrank",
    )
    parser.add_argument(
        "--budget", type=float, default=3600.0, help="seconds; cells stop early once spent"
    )
    parser.add_argument(
        "--out", default=None, help="results file stem (default multihead / multihead_quick)"
    )
    args = parser.parse_args()
    sections = args.sections.split(",")
    start = time.perf_counter()
    deadline = start + args.budget
    report: dict = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "families": {}}
    grids = dict(FAMILY_GRID)
    if args.random_grid:  # e.g. 5x8,6x16: (H, d) cells of the random family
        grids["random"] = [tuple(int(x) for x in c.split("x")) for c in args.random_grid.split(",")]
    for family, grid in grids.items():
        if family not in sections:
            continue
        n = 2 if args.quick else (args.random_per_cell if family == "random" else args.per_cell)
        cells = []
        for H, d in grid:
            cells.append({"H": H, "d": d, **family_cell(family, H, d, n, deadline)})
            c = cells[-1]
            print(
                f"{family} H={H} d={d}: {c['recovered']}/{c['ran']} recovered, {c['inexact']} inexact, "
                f"{c['raised']} raised, queries/dof {fmt(c['per_dof'])}, max error {fmt(c['max_error'], '.1e')}",
                flush=True,
            )
        report["families"][family] = cells
    if "outside" in sections:
        report["outside"] = outside_rows(2 if args.quick else 10)
        print(report["outside"], flush=True)
    if "affine" in sections:
        report["affine"] = affine_rows([(4, 2), (8, 2), (8, 4), (12, 3)], 2 if args.quick else 10)
        print(report["affine"], flush=True)
    if "lowrank" in sections:
        configs = LOWRANK[:1] if args.quick else LOWRANK
        if args.lowrank_configs:
            configs = [tuple(int(x) for x in c.split("x")) for c in args.lowrank_configs.split(",")]
        report["lowrank"] = lowrank_rows(
            configs,
            deadline,
            1 if args.quick else args.lowrank_seeds,
            lowrank_modes(args.lowrank_modes),
        )
        print(report["lowrank"], flush=True)
    report["seconds"] = time.perf_counter() - start
    stem = args.out or ("multihead_quick" if args.quick else "multihead")
    command = "python benchmarks/multihead.py " + " ".join(a for a in __import__("sys").argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.md").write_text(markdown(report, command.strip()))
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=1, default=float))
    print(f"wrote {RESULTS / stem}.md")


if __name__ == "__main__":
    main()
