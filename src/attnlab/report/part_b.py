"""Part B claims: what attention can and cannot represent (Sanford, Hsu, Telgarsky 2023)."""

from __future__ import annotations

import math

import numpy as np

from attnlab.report.claims import Context, Measurement, claim


@claim(
    "qsa-width-q-log-n",
    "B",
    "qSA with one head at width O(q log N), worst case over index sets (Thm 2)",
    "q-sparse averaging is eps-approximated (worst case over every input) by one attention head with "
    "embedding dimension m = O(d' + q log N) and p = O(log(q log N / eps)) bits (random keys, "
    "dual-certificate queries).",
)
def qsa_width(ctx: Context) -> Measurement:
    from itertools import combinations

    from attnlab.constructions import CertificateQSA, smallest_certificate_qsa
    from attnlab.constructions.qsa_certificates import certificate_precision

    # Exhaustive: every q-subset of [N] (the theorem's worst case over index sets, exact over z).
    # Adversarial: larger N, sets from an adversary aimed at the head's program (a weaker check).
    exhaustive = [(64, 2), (128, 2)] if ctx.quick else [(64, 2), (128, 2), (256, 2), (48, 3)]
    adversarial = [(256, 4)] if ctx.quick else [(256, 4), (1024, 4), (1024, 8)]
    rows, ok = [], True
    cases = exhaustive + adversarial
    for N, q in ctx.track(cases, lambda c: f"N = {c[0]}, q = {c[1]}"):
        eps = 1.0 / (2 * q)
        bits = certificate_precision(N, q, eps)
        head = smallest_certificate_qsa(
            N, q, 4, eps, bits, ctx.seed, random_sets=128, adversarial_targets=32
        )
        if (N, q) in exhaustive:
            every = np.array(list(combinations(range(N), q)), dtype=np.int64)
            errors = head.worst_case_errors(every)
            while errors.max() > eps and head.key_dim < N:  # widen until every set passes
                head = CertificateQSA.build(
                    N, q, 4, eps, min(N, math.ceil(1.1 * head.key_dim)), bits, ctx.seed
                )
                errors = head.worst_case_errors(every)
            check, checked = float(errors.max()), f"all {len(every)} index sets"
        else:
            attack = head.adversarial_sets(np.random.default_rng([ctx.seed, 77]), 32)
            check, checked = (
                float(head.worst_case_errors(attack).max()),
                "32 sets from an unseen adversary",
            )
        nontrivial = head.key_dim < N
        ok &= check <= eps and nontrivial
        rows.append(
            {
                "N": N,
                "q": q,
                "p (bits)": bits,
                "key width m'": head.key_dim,
                "m = d' + m'": head.m,
                "m' / (q log2 N)": head.key_dim / (q * math.log2(N)),
                "checked on": checked,
                "worst error (sup over z)": check,
                "eps = 1/(2q)": eps,
                "passes": check <= eps,
                "m' < N (not one-hot)": nontrivial,
            }
        )
    ratio_key = "m' / (q log2 N)"
    ok &= max(r[ratio_key] for r in rows) <= 4.0
    exhaustive_ratios = ", ".join(f"{r[ratio_key]:.2f}" for r in rows[: len(exhaustive)])
    adversarial_ratios = ", ".join(f"{r[ratio_key]:.2f}" for r in rows[len(exhaustive) :])
    return Measurement(
        measured=f"Optimised (softmax-leak) certificates. Worst case over EVERY index set, exact over z, at "
        f"{', '.join(f'N={N} q={q}' for N, q in exhaustive)}: within eps at m' / (q log2 N) = "
        f"{exhaustive_ratios}. At {', '.join(f'N={N} q={q}' for N, q in adversarial)} only against an "
        f"adversary aimed at the head (sampled, not every set: a weaker check): within eps at "
        f"m' / (q log2 N) = {adversarial_ratios}. O(q log N) is a statement for all N; this checks the "
        "sizes listed. The least-squares certificate needs several times the width against the same kind "
        "of adversary (benchmarks/results/constructions.md).",
        reproduced=bool(ok),
        table=rows,
        config={
            "exhaustive_N_q": exhaustive,
            "adversarial_N_q": adversarial,
            "d_prime": 4,
            "seed": ctx.seed,
            "certificate": "softmax-leak",
        },
    )


@claim(
    "qsa-moment-curve",
    "B",
    "qSA at width d' + 2q with infinite precision (Thm 3)",
    "With unbounded precision, width m = O(d' + q) suffices (moment-curve keys); the construction needs "
    "many bits of precision.",
)
def qsa_moment_curve(ctx: Context) -> Measurement:
    from attnlab.constructions import smallest_moment_curve_precision

    cases = [(16, 2), (64, 2)] if ctx.quick else [(16, 2), (64, 2), (256, 2), (16, 4), (64, 4)]
    rows, ok = [], True
    for N, q in ctx.track(cases, lambda c: f"N = {c[0]}, q = {c[1]}"):
        found = smallest_moment_curve_precision(
            N, q, 4, random_sets=16 if ctx.quick else 64, seed=ctx.seed
        )
        check = found.verify(rng=ctx.seed + 1, n=1)
        ok &= bool(check.passed) and found.m == 4 + 2 * q
        rows.append(
            {
                "N": N,
                "q": q,
                "m": found.m,
                "d' + 2q": 4 + 2 * q,
                "bits p needed": found.precision,
                "2q log2 N": 2 * q * math.log2(N),
                "worst error": check.max_error,
                "verified": bool(check.passed),
            }
        )
    return Measurement(
        measured="Width d' + 2q verified in every case; bits needed: "
        + ", ".join(f"{r['bits p needed']} (N={r['N']}, q={r['q']})" for r in rows)
        + ".",
        reproduced=ok,
        table=rows,
        config={"cases_N_q": cases, "d_prime": 4, "seed": ctx.seed},
    )


@claim(
    "qsa-lower-bound",
    "B",
    "No one-head layer with m p below order q solves qSA (Thm 4)",
    "No one-head attention layer with m p <= c q reaches error 1/(2q) on qSA: its output at Alice's "
    "position would solve set disjointness on q bits with fewer than q bits of communication.",
)
def qsa_lower_bound(ctx: Context) -> Measurement:
    from attnlab.constructions.communication import disjointness_rows
    from attnlab.constructions.lower_bound import measure_disjointness

    qs = [4, 6] if ctx.quick else [4, 6, 8, 10]
    rows, ok = [], True
    for q in ctx.track(qs, lambda q: f"q = {q}"):
        exact = disjointness_rows(q)
        below = [
            measure_disjointness(q, k, p, ctx.seed, "random")
            for k in range(1, q + 1)
            for p in (1, 2)
            if k * p < q
        ]
        at = measure_disjointness(q, q, 1, ctx.seed, "pair-code")
        none_below = not any(m.solves for m in below)
        ok &= (
            exact["distinct_rows"] == 2**q and exact["fooling_set_ok"] and none_below and at.solves
        )
        rows.append(
            {
                "q": q,
                "distinct rows of DISJ_q (all 4^q pairs)": exact["distinct_rows"],
                "bits any head needs": exact["one_way_bits_needed"],
                "random-key heads tried with m' p < q": len(below),
                "any of them solves": not none_below,
                "pair-code head at m' p = q solves": at.solves,
            }
        )
    return Measurement(
        measured="Every head: the DISJ_q matrix has 2^q distinct rows on all 4^q pairs (exhaustive), so no message "
        "of fewer than q bits -- Alice's query, key and value together, any maps, any readout -- decides "
        "it; this is the exact optimum of a search over all (message, decoder) pairs, so m p >= q/3 for "
        f"one head at q = {', '.join(map(str, qs))}. Concrete heads agree: none of the random-key heads "
        "below q query bits solves every instance, and a head built for the instance solves it at q bits. "
        "The theorem's 'sufficiently large q' is not checked beyond these q.",
        reproduced=bool(ok),
        table=rows,
        config={"qs": qs, "precisions": [1, 2], "seed": ctx.seed},
    )


@claim(
    "match2-one-unit",
    "B",
    "Match2 with one attention unit of width 3, no residual",
    "Match2 (is there j with x_i + x_j = 0 mod M?) is computed by one self-attention unit with m = 3 "
    "and O(log M) bits of precision.",
)
def match2_one_unit(ctx: Context) -> Measurement:
    from itertools import product

    from attnlab.constructions import smallest_match_precision
    from attnlab.constructions.match2 import Match2WidthThree
    from attnlab.tasks import get_task

    small = [(4, 5), (5, 6)] if ctx.quick else [(4, 5), (5, 6), (6, 7)]
    sampled = [(64, 97)] if ctx.quick else [(64, 97), (256, 1009)]
    rows, ok = [], True
    for N, M in small:
        inputs = {"x": np.array(list(product(range(M), repeat=N)), dtype=np.int64)}
        wrong = int(
            (
                Match2WidthThree.build(N, M).predict(inputs)
                != get_task("match2", N=N, M=M).solve(inputs)
            ).sum()
        )
        ok &= wrong == 0
        rows.append(
            {
                "N": N,
                "M": M,
                "width m": 3,
                "residual": False,
                "bits p": "float64",
                "wrong bits": wrong,
                "checked on": f"all {M**N} inputs",
            }
        )
    for N, M in sampled:
        found = smallest_match_precision(
            lambda b, N=N, M=M: Match2WidthThree.build(N, M, b), ctx.seed, n=16
        )
        v = found.verify(rng=ctx.seed + 1, n=16)
        ok &= v.bit_errors == 0 and found.m == 3
        rows.append(
            {
                "N": N,
                "M": M,
                "width m": found.m,
                "residual": False,
                "bits p": found.precision,
                "wrong bits": v.bit_errors,
                "checked on": f"{v.n_random} sampled + {v.n_adversarial} near-miss sequences",
            }
        )
    return Measurement(
        measured="One unit of width 3, psi reading only the attention output: 0 wrong bits on every input at "
        + ", ".join(f"(N, M) = ({N}, {M})" for N, M in small)
        + "; 0 wrong bits on sampled and near-miss "
        "inputs (not every input: a weaker check) at "
        + ", ".join(f"({N}, {M})" for N, M in sampled)
        + " with p = "
        + ", ".join(str(r["bits p"]) for r in rows[len(small) :])
        + " bits (the smallest the search verified; the logit gap is of order M^-4).",
        reproduced=bool(ok),
        table=rows,
        config={"exhaustive_N_M": small, "sampled_N_M": sampled, "seed": ctx.seed},
    )


@claim(
    "match3-third-order",
    "B",
    "Match3: third-order attention solves it; so does standard attention locally",
    "Match3 is out of reach for one standard layer unless m p H grows like N; third-order attention "
    "(softmax over pairs (j1, j2), Hadamard values) solves it, and local or structured variants are "
    "solved by standard attention.",
)
def match3_third_order(ctx: Context) -> Measurement:
    from attnlab.constructions import (
        ThirdOrderMatch3,
        smallest_local_match3,
        smallest_match_precision,
    )
    from attnlab.constructions.communication import (
        check_match3_reduction,
        exhaustive_layer_errors,
        indicator_layer,
        match3_instance,
        witness_failure,
    )
    from attnlab.constructions.match3_histogram import verify_histogram

    N, M = (16, 101) if ctx.quick else (32, 211)
    found = smallest_match_precision(
        lambda b: ThirdOrderMatch3.build(N, M, b), ctx.seed, n=16 if ctx.quick else 32
    )
    v3 = found.verify(rng=ctx.seed + 1, n=16)
    rows = [
        {
            "model": "third-order attention, 1 unit",
            "N": N,
            "M": M,
            "width m": found.m,
            "bits p": found.precision,
            "wrong bits": v3.bit_errors,
            "checked on": f"{v3.n_random}+{v3.n_adversarial} sampled+near-miss",
        }
    ]
    ok = v3.bit_errors == 0
    local_Ns = [32, 128] if ctx.quick else [32, 128, 512]
    local_widths = set()
    for n_local in ctx.track(local_Ns, lambda n: f"local Match3, N = {n}"):
        local = smallest_local_match3(n_local, 97, 2, None, ctx.seed)
        vl = local.verify(rng=ctx.seed + 1, n=8)
        certified = bool(vl.notes["certified_all_inputs"])
        ok &= vl.bit_errors == 0 and certified
        local_widths.add(local.m)
        rows.append(
            {
                "model": "standard attention, 1 head, window w = 2",
                "N": n_local,
                "M": 97,
                "width m": local.m,
                "bits p": local.precision or "float64",
                "wrong bits": vl.bit_errors,
                "checked on": "every window (certified for all inputs)"
                if certified
                else "sampled only",
            }
        )
    ok &= len(local_widths) == 1
    sizes = [3, 4] if ctx.quick else [3, 4, 5]
    for n in sizes:
        instance = match3_instance(n)
        exact = check_match3_reduction(instance)["reduction_exact"]
        solves = exhaustive_layer_errors(indicator_layer(instance), instance) == 0
        narrow = witness_failure(indicator_layer(instance, n - 1), instance)
        ok &= exact and solves and narrow is not None and narrow["wrong"]
        rows.append(
            {
                "model": f"standard attention on the DISJ_{n} instance",
                "N": instance.N,
                "M": instance.M,
                "width m": f"m_v = {n} solves every pair; m_v = {n - 1} fails",
                "bits p": 1,
                "wrong bits": 0 if solves else "some",
                "checked on": f"all {4**n} pairs",
            }
        )
    # the construction side of the bound: one standard head of width M solves Match3 everywhere
    histogram = [
        verify_histogram(4, 19, precision=1),  # every sequence
        verify_histogram(N, M, precision=1, samples=512 if ctx.quick else 1024, seed=ctx.seed),
    ]
    for h in histogram:
        ok &= h["wrong_bits"] == 0
        rows.append(
            {
                "model": "standard attention, 1 head, residue histogram",
                "N": h["N"],
                "M": h["M"],
                "width m": h["width"],
                "bits p": 1,
                "wrong bits": h["wrong_bits"],
                "checked on": f"all {h['sequences']} sequences"
                if h["exhaustive"]
                else f"{h['sequences']} sampled+near-miss",
            }
        )
    return Measurement(
        measured=f"Third-order attention of width {found.m} at {found.precision} bits: {v3.bit_errors} wrong bits "
        f"(sampled and near-miss inputs, not every input). Local Match3 with one standard head: width "
        f"{sorted(local_widths)} at N = {', '.join(map(str, local_Ns))} (independent of N; p grows like "
        "2 log2 N), certified on every window, hence every input. The lower bound's instance: Match3 at one "
        f"token equals set disjointness on all 4^n pairs (n = {', '.join(map(str, sizes))}), so any one-layer "
        "standard attention whose Alice-side partial sums carry fewer than n bits (H (m_v + 1) p < n, "
        "N = 2n + 1) fails on some pair; a layer at m_v = n solves it and one coordinate fewer fails on a "
        "witness. One standard head of width M (uniform attention over the residue histogram) solves "
        f"Match3 at 1 bit: {histogram[0]['wrong_bits']} wrong bits on all {histogram[0]['sequences']} "
        f"sequences at (4, 19), {histogram[1]['wrong_bits']} on {histogram[1]['sequences']} at ({N}, {M}); so "
        "the smallest standard width is at most M. Trained standard layers are measured by the training "
        "grid (benchmarks/results/training-grid.md), not here.",
        reproduced=bool(ok),
        table=rows,
        config={
            "N": N,
            "M": M,
            "local_N": local_Ns,
            "window": 2,
            "disj_sizes": sizes,
            "seed": ctx.seed,
        },
    )
