"""single_head on targets aimed at its probe scaling: failures counted, not only successes.

Two families. **sparse**: each target draws, from its own seed:
- d in {8, 16, 33, 64, 96}; k in 1..min(8, d) spikes at distinct rows and columns (rank k), of
  magnitudes 10^U(-2, 2.5) and random signs: a row of such a W is zero but for one entry, so its
  warm-up reads nothing and its bulk meets the spike at whatever scale it has grown to;
- the rank mode: known (rank=k), full (a permutation of magnitudes 10^U(-1, 2) added: rank d,
  every column one or two spikes) or "auto";
- v: Gaussian, one-hot, or small integers (the last two answer on a coarse grid);
- 30% affine, with score biases u = 10^U(-1, 2) x Gaussian and c = 0.2.

**scaled**: Gaussian W of rank k (or full) times 10^U(-9, 6) (the first probe guesses unit-size
bilinear values), Gaussian v (times 1e-3 above 1e3, to keep answers finite-sized), the same rank
modes, 30% affine with u = 10^U(-1, 1) x Gaussian.

Each target's outcome: exact (relative Frobenius error of W <= 1e-9) or not, warned or silent,
or raised; "inexact, silent" is what must not happen. `beyond limit` = oracle-counted queries minus the information limit (the repairs of unsafe
readings plus the one precision-check query of a coarse-looking v). Usage:

    python benchmarks/single_head_adversarial.py --targets 300 [--families sparse,scaled]
        [--out benchmarks/results/single_head_adversarial.md]

Run it with PYTHONPATH pointing at another checkout's src to compare code versions on the same
targets.
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from attnlab import Oracle
from attnlab.evaluate import relative_error
from attnlab.extract import single_head
from attnlab.extract.single_head import exact_limit
from attnlab.models import AffineHead, SingleHeadAttention

SEED_BASE = 1000


def draw_scaled(seed: int):
    """A generic target of any size: (head, d, rank argument, affine, W, description)."""
    rng = np.random.default_rng(2 * SEED_BASE + seed)
    d = int(rng.choice([8, 16, 33, 64, 96]))
    k = int(rng.integers(1, min(8, d) + 1))
    mode = str(rng.choice(["known", "full", "auto"]))
    affine = bool(rng.random() < 0.3)
    exponent = rng.uniform(-9, 6)
    G = (
        rng.standard_normal((d, d))
        if mode == "full"
        else rng.standard_normal((d, k)) @ rng.standard_normal((k, d))
    )
    W = 10.0**exponent * G
    v = rng.standard_normal(d) * (1e-3 if exponent > 3 else 1.0)
    rank = {"known": k if k < d else None, "full": None, "auto": "auto"}[mode]
    if affine:
        head = AffineHead(W, 10.0 ** rng.uniform(-1, 1) * rng.standard_normal(d), v, 0.2)
    else:
        head = SingleHeadAttention(W, v)
    return (
        head,
        d,
        rank,
        affine,
        W,
        f"d={d} k={k} {mode} {'affine ' if affine else ''}W x 1e{exponent:.1f}",
    )


def draw(seed: int):
    """One sparse adversarial target: (head, d, rank argument, affine, W, description)."""
    rng = np.random.default_rng(SEED_BASE + seed)
    d = int(rng.choice([8, 16, 33, 64, 96]))
    k = int(rng.integers(1, min(8, d) + 1))
    mode = str(rng.choice(["known", "full", "auto"]))
    affine = bool(rng.random() < 0.3)
    W = np.zeros((d, d))
    rows, cols = rng.choice(d, k, replace=False), rng.choice(d, k, replace=False)
    W[rows, cols] = 10.0 ** rng.uniform(-2, 2.5, k) * rng.choice([-1, 1], k)
    if mode == "full":
        W[np.arange(d), rng.permutation(d)] += 10.0 ** rng.uniform(-1, 2, d)
    kind = str(rng.choice(["gaussian", "one-hot", "integers"]))
    if kind == "gaussian":
        v = rng.standard_normal(d)
    elif kind == "one-hot":
        v = np.eye(d)[0]
    else:
        v = rng.integers(-3, 4, d).astype(np.float64)
        v[0] = v[0] or 1.0
    rank = {"known": k if k < d else None, "full": None, "auto": "auto"}[mode]
    if affine:
        u = 10.0 ** rng.uniform(-1, 2) * rng.standard_normal(d)
        head = AffineHead(W, u, v, 0.2)
    else:
        head = SingleHeadAttention(W, v)
    return head, d, rank, affine, W, f"d={d} k={k} {mode} {'affine ' if affine else ''}v={kind}"


FAMILIES = {"sparse": draw, "scaled": draw_scaled}


def run(targets: int, family: str = "sparse") -> dict:
    torch.set_num_threads(1)
    failures, beyond, repaired, errors, under = [], [], [], [], []
    outcomes: dict[str, int] = {}
    started = time.perf_counter()
    for seed in tqdm(range(targets), desc=f"{family} targets"):
        head, d, rank, affine, W, what = FAMILIES[family](seed)
        oracle = Oracle(head, d=d)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = single_head(
                    oracle, rank=rank, affine=affine, seed=seed, fidelity_samples=0
                )
            except Exception as error:  # noqa: BLE001 (a failure is counted, whatever it is)
                failures.append((seed, what, f"{type(error).__name__}: {str(error)[:90]}"))
                continue
        error = relative_error(result.params["W"], W)
        errors.append(error)
        under.append(error / result.info["estimated_error"])
        found = result.info.get("rank", d)
        beyond.append(oracle.queries - exact_limit(d, found, affine, rank))
        repaired.append(int(result.info.get("repaired_queries", 0)))
        outcome = ("exact" if error <= 1e-9 else "inexact") + (", warned" if caught else "")
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if error > 1e-9 or caught:
            said = "; ".join(str(w.message)[:70] for w in caught)
            failures.append(
                (seed, what, f"error {error:.1e}" + (f", warned: {said}" if said else ""))
            )
    return {
        "family": family,
        "targets": targets,
        "failures": failures,
        "beyond": beyond,
        "repaired": repaired,
        "errors": errors,
        "under": under,
        "outcomes": outcomes,
        "seconds": time.perf_counter() - started,
    }


def report(outs: list[dict], command: str) -> str:
    lines = [
        "# single_head on adversarial targets",
        "",
        f"Command: `{command}` ({sum(o['seconds'] for o in outs):.0f} s).",
        "",
        "| family | targets | exact | exact, warned | inexact, warned | inexact, silent | raised "
        "| W error median | W error max | error / estimate max | beyond limit: median | max "
        "| repaired max |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for out in outs:
        beyond = np.array(out["beyond"] or [0])
        errors = np.array(out["errors"] or [np.nan])
        lines.append(
            f"| {out['family']} | {out['targets']} | "
            + " | ".join(
                str(out["outcomes"].get(k, 0))
                for k in ("exact", "exact, warned", "inexact, warned", "inexact")
            )
            + f" | {out['targets'] - len(out['errors'])} | {np.nanmedian(errors):.1e} | "
            f"{np.nanmax(errors):.1e} | {max(out['under'] or [np.nan]):.0f} | "
            f"{int(np.median(beyond))} | {int(beyond.max())} | {max(out['repaired'] or [0])} |"
        )
    for out in outs:
        if out["failures"]:
            lines += ["", f"Failures ({out['family']}):", "", "| seed | target | what happened |"]
            lines += ["|---:|---|---|"]
            lines += [f"| {s} | {what} | {why} |" for s, what, why in out["failures"][:40]]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", type=int, default=300, help="targets per family")
    parser.add_argument("--families", default="sparse,scaled")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    command = f"python benchmarks/single_head_adversarial.py --targets {args.targets} --families {args.families}"
    text = report([run(args.targets, f) for f in args.families.split(",")], command)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
