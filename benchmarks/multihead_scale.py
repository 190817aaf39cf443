"""multi_head on W of any size: failures counted per scale.

`MultiHeadRegressor.random(d, H, scale=c, seed)` for (H, d) in CELLS and seeds 0..n-1, at every
scale c. A target fails when multi_head raises or returns canonical heads more than 1e-8 off.
Usage:

    python benchmarks/multihead_scale.py [--scales 1e-8,1e-6,1e-4,1e-2,1,10,100,1e4] [--seeds 6]
        [--out benchmarks/results/multihead_scale.md]

Run with PYTHONPATH pointing at another checkout's src to compare code versions.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnlab import Oracle
from attnlab.extract import multi_head
from attnlab.models import MultiHeadRegressor
from attnlab.models.canonical import MultiHeadParams, canonical_error

CELLS = [(2, 4), (3, 8), (2, 16), (4, 8), (1, 16)]


def run(scale: float, seeds: int) -> dict:
    failures, errors, rescaled, queries = [], [], 0, []
    for heads, d in CELLS:
        for seed in range(seeds):
            model = MultiHeadRegressor.random(d, heads, scale=scale, seed=seed)
            oracle = Oracle(model, d=d)
            try:
                result = multi_head(oracle, heads=heads, fidelity_samples=0, seed=seed)
            except Exception as error:  # noqa: BLE001 (a failure is counted, whatever it is)
                failures.append(f"H={heads} d={d} seed {seed}: {type(error).__name__}")
                continue
            truth = MultiHeadParams.from_model(model)
            error = canonical_error(MultiHeadParams(result.W, result.v), truth)
            errors.append(error)
            queries.append(result.queries / result.dof)
            rescaled += "token_scale" in result.info
            if error > 1e-8:
                failures.append(f"H={heads} d={d} seed {seed}: error {error:.1e}")
    return {
        "scale": scale,
        "targets": len(CELLS) * seeds,
        "failures": failures,
        "errors": errors,
        "rescaled": rescaled,
        "queries": queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scales", default="1e-8,1e-6,1e-4,1e-2,1,10,100,1e4")
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    rows = [run(float(s), args.seeds) for s in tqdm(args.scales.split(","), desc="scales")]
    lines = [
        "# multi_head on W of any size",
        "",
        f"Command: `python benchmarks/multihead_scale.py --scales {args.scales} --seeds {args.seeds}` "
        f"({time.perf_counter() - started:.0f} s). (H, d) in {CELLS}.",
        "",
        "| scale | targets | failures | rescaled | median error | max error | queries / dof (median) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        errors = np.array(row["errors"] or [np.nan])
        lines.append(
            f"| {row['scale']:g} | {row['targets']} | {len(row['failures'])} | {row['rescaled']} | "
            f"{np.nanmedian(errors):.1e} | {np.nanmax(errors):.1e} | "
            f"{np.median(row['queries'] or [np.nan]):.2f} |"
        )
    for row in rows:
        if row["failures"]:
            lines += ["", f"Failures at scale {row['scale']:g}: " + "; ".join(row["failures"])]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
