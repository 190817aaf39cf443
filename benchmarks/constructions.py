"""Sizes the Sanford-Hsu-Telgarsky constructions need, measured by verified searches.

    python benchmarks/constructions.py            # full grid (N up to 4096)
    python benchmarks/constructions.py --quick    # small grid, about a minute

Writes benchmarks/results/constructions.md (tables) and constructions.png (figure):
1. Theorem 2 (random sign keys, dual certificates): the smallest key width m' whose exact worst
   case over z is <= eps = 1/(2q), for N in {64, 256, 1024, 4096} and q in {2, 4, 8}, at the
   Theorem-2 precision p. Two criteria side by side: uniform random index sets only, and random
   sets plus a greedy adversary's sets. Fitted against q log2 N. The found head is then run end
   to end on sampled and adversarial sequences (task.score).
2. Theorem 3 (moment curve): the smallest precision p with worst case <= 1/(2q), against 2q log2 N.
3. Theorem 4: on the set-disjointness instance, the smallest query bits m' p that solve every
   input, for the Theorem-2 head and for instance-specific keys, beside the line m' p = q.
4. Match2 / Match3 / local Match3: width, searched precision, wrong bits.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from attnlab.constructions import (
    Match2Construction,
    ThirdOrderMatch3,
    smallest_certificate_qsa,
    smallest_local_match3,
    smallest_match_precision,
    smallest_moment_curve_precision,
)
from attnlab.constructions.lower_bound import measure_disjointness, smallest_query_bits
from attnlab.constructions.qsa_certificates import certificate_precision

RESULTS = Path(__file__).resolve().parent / "results"
SEED = 0


def progress(items, desc):
    return tqdm(items, desc=desc, file=sys.stderr, disable=not sys.stderr.isatty(), leave=False)


def table(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{v:.3f}".rstrip("0").rstrip(".")
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def fit_through_origin(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """y ~ C x: the least-squares C and the largest relative residual."""
    C = float(x @ y / (x @ x))
    return C, float(np.max(np.abs(y - C * x) / y))


def theorem2(Ns, qs, d_prime, random_sets, targets_for):
    rows, points = [], []
    for N, q in progress([(N, q) for q in qs for N in Ns], "theorem 2"):
        eps, bits = 1.0 / (2 * q), certificate_precision(N, q, 1.0 / (2 * q))
        targets = min(N, targets_for(N))
        start = time.perf_counter()
        typical = smallest_certificate_qsa(N, q, d_prime, eps, bits, SEED, random_sets, adversarial_targets=0)
        robust = smallest_certificate_qsa(N, q, d_prime, eps, bits, SEED, random_sets, adversarial_targets=targets)
        check = robust.verify(rng=SEED + 1, n=1, adversarial_targets=targets)
        seconds = time.perf_counter() - start
        x = q * math.log2(N)
        points.append((x, typical.key_dim, robust.key_dim, N, q))
        def shown(k):  # m' = N is the one-hot code, not a random design
            return f"{k} (one-hot)" if k >= N else k

        rows.append([N, q, bits, shown(typical.key_dim), shown(robust.key_dim), robust.m, round(typical.key_dim / x, 2),
                     round(robust.key_dim / x, 2), check.random["max_error"], check.max_error,
                     "yes" if check.passed else "no", round(seconds, 1)])
    return rows, np.array(points)


def theorem3(Ns, qs, random_sets):
    rows, points = [], []
    for N, q in progress([(N, q) for q in qs for N in Ns if q < N], "theorem 3"):
        start = time.perf_counter()
        found = smallest_moment_curve_precision(N, q, 4, random_sets=random_sets, seed=SEED)
        check = found.verify(rng=SEED + 1, n=1) if N <= 1024 else None
        x = 2 * q * math.log2(N)
        points.append((x, found.precision))
        rows.append([N, q, found.m, f"{found.beta:.3g}", found.precision, round(found.precision / x, 2),
                     found.search[found.precision], found.search.get(found.precision - 1, float("nan")),
                     "-" if check is None else ("yes" if check.passed else "no"),
                     round(time.perf_counter() - start, 1)])
    return rows, np.array(points)


def lower_bound(qs_random, qs_code, key_dims, precisions):
    rows, code_rows = [], []
    for q in progress(qs_random, "theorem 4 (random keys)"):
        N = 2 * q + 1
        best = smallest_query_bits(q, [k for k in key_dims if k < N], precisions, SEED)
        rows.append([q, "Theorem-2 head (random keys, m' < N)", best["query_bits"], best["key_dim"], best["precision"]])
        one_hot = smallest_query_bits(q, [N], precisions, SEED)
        rows.append([q, "one-hot keys (m' = N = 2q + 1)", one_hot["query_bits"], one_hot["key_dim"], one_hot["precision"]])
    for q in progress(qs_code, "theorem 4 (pair code)"):
        for k in sorted({1, q // 2, q - 1, q}):
            m = measure_disjointness(q, k, 1, SEED, design="pair-code")
            code_rows.append([q, k, 1, m.query_bits, m.distinct_messages, 2 ** q, m.worst_error,
                              m.wrong_decisions, "yes" if m.solves else "no",
                              "yes" if m.witness else "no"])
        rows.append([q, "pair code (made for DISJ)", q, q, 1])
    return rows, code_rows


def matches(match2_sizes, match3_sizes, local_sizes):
    rows = []
    for N, M in progress(match2_sizes, "match2"):
        found = smallest_match_precision(lambda b: Match2Construction.build(N, M, b), SEED, n=16)
        v = found.verify(rng=SEED + 1, n=16)
        rows.append(["match2", "standard, 1 head", N, M, found.m, found.precision, v.bit_errors,
                     f"{v.n_random}+{v.n_adversarial}", round(math.log2(M), 1)])
    for N, M in progress(match3_sizes, "match3"):
        found = smallest_match_precision(lambda b: ThirdOrderMatch3.build(N, M, b), SEED, n=8)
        v = found.verify(rng=SEED + 1, n=8)
        rows.append(["match3", "third-order, 1 head", N, M, found.m, found.precision, v.bit_errors,
                     f"{v.n_random}+{v.n_adversarial}", round(math.log2(M), 1)])
    for N, M, w in progress(local_sizes, "match3-local"):
        found = smallest_local_match3(N, M, w, None, SEED)
        v = found.verify(rng=SEED + 1, n=8)
        rows.append([f"match3-local (w={w})", f"standard, 1 head, m'={found.key_dim}", N, M, found.m,
                     "float64", v.bit_errors, f"{v.n_random}+{v.n_adversarial}", round(math.log2(M), 1)])
    return rows


def figure(path, thm2_points, thm3_points, lb_rows, C2):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    ax = axes[0]
    x = thm2_points[:, 0]
    ax.scatter(x, thm2_points[:, 1], label="random index sets")
    ax.scatter(x, thm2_points[:, 2], marker="s", label="random + adversarial sets (q^2 fit dashed)")
    grid = np.linspace(0, x.max() * 1.05, 50)
    ax.plot(grid, C2[0] * grid, "-", color="gray", lw=1)
    for q in np.unique(thm2_points[:, 4]):
        ax.plot(grid, C2[1] * q * grid, "--", color="gray", lw=0.7)
    ax.set(xlabel="q log2 N", ylabel="smallest key width m'", title="Theorem 2: width vs q log N (eps = 1/(2q))")
    ax.legend()
    ax = axes[1]
    ax.scatter(thm3_points[:, 0], thm3_points[:, 1])
    g = np.linspace(0, thm3_points[:, 0].max() * 1.05, 50)
    ax.plot(g, g, color="gray", lw=1, label="p = 2q log2 N")
    ax.set(xlabel="2q log2 N", ylabel="bits p needed", title="Theorem 3: precision of the moment curve")
    ax.legend()
    ax = axes[2]
    for design, marker in (("one-hot keys (m' = N = 2q + 1)", "o"), ("pair code (made for DISJ)", "s")):
        pts = [(r[0], r[2]) for r in lb_rows if r[1] == design and np.isfinite(r[2])]
        if pts:
            ax.plot(*zip(*pts), marker=marker, label=design)
    qs = [r[0] for r in lb_rows]
    ax.plot([min(qs), max(qs)], [min(qs), max(qs)], color="gray", lw=1, label="m' p = q")
    ax.set(xlabel="q", ylabel="smallest m' p solving every DISJ_q input", yscale="log",
           title="Theorem 4: bits in one query")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small grid (about a minute)")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.quick:
        config = dict(Ns=[64, 256], qs=[2, 4], random_sets=256, targets=lambda N: 32, thm3_Ns=[16, 64, 256],
                      thm3_qs=[1, 2], lb_random=[4, 6], lb_code=[4, 8], key_dims=[8, 16, 32, 64, 128],
                      precisions=[1, 2, 4, 8], match2=[(64, 97)], match3=[(24, 211)], local=[(32, 29, 2)])
    else:
        config = dict(Ns=[64, 256, 1024, 4096], qs=[2, 4, 8], random_sets=1024,
                      targets=lambda N: N if N <= 1024 else 256,
                      thm3_Ns=[16, 64, 256, 1024, 4096], thm3_qs=[1, 2, 4, 8], lb_random=[4, 6, 8, 10],
                      lb_code=[4, 8, 12], key_dims=[4, 8, 16, 32, 64, 128, 256],
                      precisions=[1, 2, 3, 4, 6, 8, 12], match2=[(64, 97), (256, 1009), (1024, 4099)],
                      match3=[(32, 211), (64, 1009), (128, 4099)], local=[(64, 97, 2), (256, 211, 3)])
    d_prime = 4
    thm2_rows, thm2_points = theorem2(config["Ns"], config["qs"], d_prime, config["random_sets"], config["targets"])
    thm2_rows = [row[:2] + [min(row[0], config["targets"](row[0]))] + row[2:] for row in thm2_rows]
    # one-hot widths (m' = N) are where the random design stopped, not a measurement of it
    random_design = thm2_points[thm2_points[:, 1] < thm2_points[:, 3]]
    adversarial_design = thm2_points[thm2_points[:, 2] < thm2_points[:, 3]]
    C_typ, res_typ = fit_through_origin(random_design[:, 0], random_design[:, 1])
    C_adv, res_adv = fit_through_origin(adversarial_design[:, 0], adversarial_design[:, 2])
    C_adv2, res_adv2 = fit_through_origin(adversarial_design[:, 0] * adversarial_design[:, 4], adversarial_design[:, 2])
    thm3_rows, thm3_points = theorem3(config["thm3_Ns"], config["thm3_qs"], 32)
    C3, res3 = fit_through_origin(thm3_points[:, 0], thm3_points[:, 1])
    lb_rows, code_rows = lower_bound(config["lb_random"], config["lb_code"], config["key_dims"], config["precisions"])
    match_rows = matches(config["match2"], config["match3"], config["local"])

    command = "python benchmarks/constructions.py" + (" --quick" if args.quick else "")
    report = [
        "# Constructions of Sanford, Hsu, Telgarsky (2023): measured sizes",
        "",
        f"Command: `{command}` (seed {SEED}, d' = {d_prime}); {time.perf_counter() - started:.0f} s on this machine. "
        "Every size below is the result of a search whose candidates were verified, not a formula.",
        "",
        "## 1. Theorem 2: smallest key width m' reaching eps = 1/(2q)",
        "",
        f"Worst case over z computed exactly per index set (sup = l1 distance of the attention weights from "
        f"uniform on S). 'random': {config['random_sets']} uniform index sets; 'adversarial': the same plus, for "
        "each of T target keys u_t (column T: every key when T = N, else a random sample), the q-set greedily "
        "built to maximise the off-support score <w_S, u_t>. p = the Theorem-2 precision ceil(log2(4 beta sqrt(q) / eps)), beta = 2 ln(2N/(q eps)). "
        "m = m' + d'. The last columns run the adversarial-criterion head end to end (AttentionUnit, task.score) "
        "on 1 sampled sequence and on the adversarial sequences of an adversary run with seed 1 (the same sets "
        "when T = N; a fresh sample of targets when T < N).",
        "",
        table(["N", "q", "T", "p", "m' (random)", "m' (adversarial)", "m", "m'/(q log2 N) random",
               "m'/(q log2 N) adv.", "end-to-end error, sampled", "end-to-end error, worst", "passes", "s"],
              thm2_rows),
        "",
        "m' = N marks the one-hot code (e_j keys, exact certificates), where the random design gave no saving; "
        "the search never goes beyond it.",
        "",
        f"Fit m' = C q log2 N (least squares through 0, one-hot rows left out): **C = {C_typ:.2f}** for random "
        f"sets (largest relative residual {res_typ:.0%}): linear in q log N, as Theorem 2 says. With the "
        f"adversary, C q log2 N fits badly (C = {C_adv:.2f}, residual {res_adv:.0%}) and **m' = {C_adv2:.2f} "
        f"q^2 log2 N** fits (residual {res_adv2:.0%}): random keys certify a fixed typical set with O(q log N) "
        "rows, but every set at once needs about q^2 log N against this adversary.",
        "",
        "What the analysis gives: Theorem 2 states m = Omega(d' + q log N) without a constant. A back-of-envelope "
        "version (ours): for one set S with U_S^T U_S close to I, <w_S, u_j> is sub-Gaussian with variance proxy "
        "q/m', so P(<w_S,u_j> > 1/2) <= exp(-m'/(8q)) and a union bound over the N keys needs m' >= 8 q ln N = "
        "5.5 q log2 N for one set w.h.p.; a union over all N^q sets raises this to about 8 q^2 ln N, which is "
        "why the adversarial column grows faster than the random one. The measured C is below 5.5 because "
        "eps = 1/(2q) tolerates off-support scores somewhat above 1/2 at the chosen beta.",
        "",
        "## 2. Theorem 3: bits p the moment-curve head needs (eps = 1/(2q))",
        "",
        "Keys (t, ..., t^{2q}), t_j = -1 + 2j/(N-1); exact integer arithmetic on p-bit rounded queries, keys and "
        "logits (any p). Sets checked: 32 random sets plus all q-sets when C(N, q) <= 5000, else a hill-climbing "
        "adversary started from blocks packed around a gap (they attain the smallest gap), blocks at the ends "
        "and 32 random sets. 'verified' runs the head end to end "
        "(task.score) where N <= 1024.",
        "",
        table(["N", "q", "m = 2q + d'", "beta", "p needed", "p / (2q log2 N)", "error at p", "error at p-1",
               "verified", "s"], thm3_rows),
        "",
        f"Fit p = C 2q log2 N: **C = {C3:.2f}** (largest relative residual {res3:.0%}). The gap between "
        "on- and off-support logits shrinks like N^{-2q}, so beta and p grow like 2q log2 N: the reason the "
        "O(d' + q) width of Theorem 3 needs 'infinite' precision, while Theorem 2 pays a log N factor in width "
        "for O(log(q log N / eps)) bits.",
        "",
        "## 3. Theorem 4: bits Alice's query needs on the set-disjointness instance",
        "",
        "N = 2q + 1, eps = 1/(2q); every input a in {0,1}^q, and the exact worst case over all b. Smallest "
        f"m' p solving every input over p in {config['precisions']} for: random sign keys with m' < N from "
        f"{config['key_dims']} ('inf': none solves), one-hot keys (m' = N), and the instance-specific pair code "
        "(keys -+e_k on the slots of pair k, p = 1). On this tiny N the random design never beats one-hot keys.",
        "",
        table(["q", "head", "smallest m' p", "m'", "p"], lb_rows),
        "",
        "Below m' p = q the pair code must fail: fewer than 2^q distinct queries, so two inputs a != a' send the "
        "same query, and a witness b makes exactly one of the pairs disjoint (error >= 1/q):",
        "",
        table(["q", "m'", "p", "m' p", "distinct queries", "inputs a", "worst error", "wrong decisions",
               "solves", "witness"], code_rows),
        "",
        "## 4. Match2, Match3 (third-order), local Match3",
        "",
        "p: the smallest precision with no wrong bit on the search's verification inputs (sampled + near-miss "
        "sequences; p >= 53 is float64); 'wrong bits' re-verifies at that p on fresh inputs (seed 1), so a "
        "nonzero count means the search's inputs missed a harder case. Local Match3 is certified on every window exhaustively (see "
        "attnlab.constructions.match3_local).",
        "",
        table(["task", "attention", "N", "M", "m", "p", "wrong bits", "sequences (sampled+near-miss)", "log2 M"],
              match_rows),
        "",
        "![constructions](constructions.png)",
        "",
    ]
    RESULTS.mkdir(exist_ok=True)
    name = "constructions_quick" if args.quick else "constructions"
    (RESULTS / f"{name}.md").write_text("\n".join(report))
    figure(RESULTS / f"{name}.png", thm2_points, thm3_points, lb_rows, (C_typ, C_adv2))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
