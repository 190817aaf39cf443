"""Learning multi-head attention from value queries, up to its canonical form.

`multi_head` needs no structural assumption. For a key direction u and a query token b, the
sequence of c copies of a = b + u followed by m copies of b answers

    f - b^T V - C = sum_h gamma_h * t lam_h / (1 + t lam_h),    t = c / m,

with V = sum_h v_h and C the shared constant (read from one-token queries), gamma_h = u^T v_h
and lam_h = exp(s_h), s_h = u^T W_h b (+ u^T u_h for affine heads). Divided by t this is a
rational function of t with one pole per canonical head at -1/lam_h and residue gamma_h, whose
residues sum to u^T V. So 2H - 1 ratios t fix the H pairs (gamma_h, s_h) (module `rational`).

d directions u times d tokens b (d + 1 for affine heads) give the s_h for every head, hence
W_h (and u_h), and the gammas give v_h. gamma_h depends on u only: once a direction's gammas are
known from two or more "anchor" tokens, each further token needs only its H logits, found by
Newton's method continued from a nearby anchor ("continuation", the default; module `learner`):
about H (d^2 + d) + (H - 1) d * anchors + d queries, against 4 H d^2 - 2H + 1 for the published
algorithm (arXiv 2608.03294) and H (d^2 + d) free parameters. Heads are labelled across the tokens
of a direction by their gammas and across directions by "added-token" queries. Which probes are
trusted is decided by what the data pin down (see docs/multihead.md): a fit's error bound, an
order of heads that alone explains the answers; never by fixed fractions of the parameters.

Nearly parallel heads (W_h within a few per cent of a common W_0) share a large common logit
a_0 . b that saturates every softmax before their differences separate the poles. When the
first direction's exact columns W_h^T u show that (module `first`), every direction is read in
a frame (module `common`): tokens orthogonal to an estimate of its common row a_0 (d one-query
probes), where only the differences are left and can be scaled up, plus one short step along
a_0, a common logit shift that continuation predicts.

`orthogonal_heads` (module `orthogonal`) is Prop. 7.1's structured case: heads in known pairwise
orthogonal subspaces, learned one at a time by the single-head algorithm.
"""

from __future__ import annotations

import time

import numpy as np

from attnlab._random import as_generator
from attnlab.errors import ExtractionError
from attnlab.extract.convention import resolve_method
from attnlab.extract.multihead.assemble import check
from attnlab.extract.multihead.learner import Learner
from attnlab.extract.multihead.orthogonal import measure, orthogonal_heads
from attnlab.extract.multihead.rational import Tolerances
from attnlab.extract.multihead.refine import MAX_PARAMETERS, refine
from attnlab.extract.multihead.token_scale import (
    AT_HOME,
    FAR_FROM_HOME,
    scale_from,
    scaled_oracle,
    token_scale,
)
from attnlab.extract.result import Extraction
from attnlab.models.canonical import MultiHeadParams, canonical_order
from attnlab.oracle import Oracle

MAX_HEADS = 6  # beyond this the degree-2H rational fits lose too many digits in float64
_SHARED = {
    "check_queries": None,
    "refine": True,
    "fit_tol": 1e-9,
    "logit_tol": 1e-9,
    "min_gap": 0.03,
    "max_logit": 4.5,
    "isolate": False,
}
METHOD_OPTIONS: dict[str, dict] = {
    "continuation": {"anchors": 2, **_SHARED},
    "interpolation": dict(_SHARED),
}
METHODS = tuple(METHOD_OPTIONS)


def published_query_bound(heads: int, d: int) -> int:
    """Queries used by the canonical learner of arXiv 2608.03294: 4 H d^2 - 2 H + 1."""
    return 4 * heads * d * d - 2 * heads + 1


def canonical_dof(heads: int, d: int, affine: bool = False) -> int:
    """Free parameters of a canonical form with H heads: H (d^2 + d), plus H d + 1 when affine."""
    return heads * (d * d + d) + (heads * d + 1 if affine else 0)


def multi_head(
    oracle: Oracle,
    *,
    heads: int | None = None,
    max_heads: int | None = None,
    affine: bool = False,
    rank: int | None = None,
    method: str = "continuation",
    method_options: dict | None = None,
    seed=0,
    fidelity_samples: int = 1000,
    progress: bool = False,
) -> Extraction:
    """Learn the canonical form of a multi-head regressor from exact value queries.

    Parameters
    ----------
    oracle : Oracle
        Value queries to f(X) = c + sum_h softmax(X W_h x_N + X u_h)^T X v_h (u = 0, c = 0
        unless affine); its d must be set.
    heads : int, optional
        The number H of canonical heads, if known.
    max_heads : int, optional
        An upper bound H0 instead: the first probe (2 H0 + 1 queries) finds H <= H0.
    affine : bool
        Heads with key/query/value biases (as nn.MultiheadAttention(bias=True)): also recovers
        u_h and the shared constant c (d + 1 more queries for the values, one more token per
        direction).
    rank : int, optional
        An upper bound r on every head's rank: r + max(4, r / 4) key directions (r + 2 where
        that is more than d / 4; each the best conditioned of 4 reference pairs) are read at all d tokens, which spans each head's row space (and
        confirms the rank: a larger one raises; one misread direction is replaced), and the
        other directions at r + 2 tokens only: about H (2 r d + 6 d) queries instead of
        H (d^2 + d). dof stays the canonical H (d^2 + d) count; see docs/multihead.md.
    method : "continuation" or "interpolation"
        How the logits of each key direction are read once its gammas are known: H queries per
        token by Newton continuation from a nearby anchor (default), or a separate (2H - 1)-point
        rational fit per token (simpler, kept for comparison).
    method_options : dict, optional
        anchors (continuation only): tokens per direction read by a full fit (default 2);
        check_queries: random sequences the result must match to 1e-6 (relative) before it is
        returned, else ExtractionError (default 2; counted in `queries`, stage "check");
        isolate (with rank): read the directions after those read in full one head at a time,
        with query tokens orthogonal to the other heads' row spaces (module `isolated`): H (r + 1)
        queries a direction instead of about H (r + 2) + 2 (H - 1), 12-21% fewer in all, but
        its error is the row spaces' error times the other heads' gammas over each head's:
        1.03e-8 to 2.9e-7 at (64, 4, 8) and (128, 4, 16), where the default reaches 1.5e-9 to
        9.96e-9 (benchmarks/results/multihead_lowrank.md). Default False; needs H r <= d;
        refine: a final Gauss-Newton polish of all parameters on every answer kept (default
        True; only up to refine.MAX_PARAMETERS parameters); fit_tol, logit_tol, min_gap, max_logit: when
        a probe's fit is trusted (see rational.Tolerances).
    seed : int or Generator
        Chooses the random probe directions (attnlab._random.as_generator).
    fidelity_samples : int
        Fresh random sequences (lengths 1..32) on which the result is compared with the oracle
        afterwards, reported as `fidelity`; counted in `fidelity_queries`, not in `queries`.
    progress : bool
        Show a tqdm.auto bar over the key directions.

    Returns an Extraction with params "W" (H, d, d), "v" (H, d) (and "u" (H, d), "c" when
    affine) in canonical order, queries read from the oracle, dof = canonical_dof(H, d, affine),
    info["heads_found"] and info["published_bound"] = 4 H d^2 - 2 H + 1.
    """
    d = oracle.require_d("multi_head")
    options = resolve_method(method, method_options, METHOD_OPTIONS)
    if heads is None and max_heads is None:
        raise ValueError(
            "give heads=H (number of canonical heads) or max_heads=H0 (an upper bound)"
        )
    for name, value in (("heads", heads), ("max_heads", max_heads)):
        if value is not None and not 0 <= value <= MAX_HEADS:
            raise ValueError(f"{name} must be in [0, {MAX_HEADS}], got {value}")
    if heads is not None and max_heads is not None and heads > max_heads:
        raise ValueError(f"heads = {heads} exceeds max_heads = {max_heads}")
    if rank is not None and not 1 <= rank <= d:
        raise ValueError(f"rank must be in [1, d = {d}], got {rank}")
    if fidelity_samples < 0:
        raise ValueError(f"fidelity_samples must be >= 0, got {fidelity_samples}")
    anchors = options.get("anchors", 2)
    if anchors < 1:
        raise ValueError(f"anchors must be >= 1, got {anchors}")
    # two fresh random sequences cost almost nothing and turn a wrong model into an error
    check_queries = 2 if options["check_queries"] is None else int(options["check_queries"])
    tol = Tolerances(
        options["fit_tol"], options["logit_tol"], options["min_gap"], options["max_logit"]
    )
    rng = as_generator(seed)
    start, clock = oracle.queries, time.perf_counter()
    most = max_heads if heads is None else heads
    assert most is not None  # heads or max_heads was required above

    def learn(box: Oracle) -> tuple[Learner, MultiHeadParams, dict]:
        learner = Learner(box, rng, heads, most, method, affine, anchors, tol, progress)
        learner.rank = rank
        learner.isolate = bool(options["isolate"])
        learner.keep = options["refine"] and canonical_dof(most, d, affine) <= MAX_PARAMETERS
        params, extra = learner.run()
        return learner, params, extra

    scale = 1.0
    try:
        learner, params, extra = learn(oracle)
    except ExtractionError as failure:
        # the probes assume unit-size logits; a W far from that (entries ~1e-4 or ~100) makes
        # them give up. Measure the size (204 queries) and read the rescaled box f(sX) instead
        before = oracle.queries
        measured = token_scale(oracle, d, rng)
        if measured is None or 1 / AT_HOME <= measured <= AT_HOME:
            raise failure
        scale = measured
    else:
        before = oracle.queries
        size = float(np.sqrt(np.mean(params.W**2))) if params.W.size else 1.0
        if 0.0 < size < FAR_FROM_HOME or size > 1.0 / FAR_FROM_HOME:
            # read at logits far from home: read again as the box rescaled from this W
            scale = scale_from(params.W)
    if scale != 1.0:
        learner, params, extra = learn(scaled_oracle(oracle, scale))
        extra.update(token_scale=scale, token_scale_queries=oracle.queries - before)
    if learner.keep:
        params, polish = refine(
            params, learner.kept_sequences, np.array(learner.kept_answers), affine
        )
        extra["refine"] = polish
        learner.kept_sequences, learner.kept_answers = [], []
    order = canonical_order(params.W, params.v)
    assert params.u is not None  # MultiHeadParams.__post_init__ fills u (zeros without biases)
    params = MultiHeadParams(params.W[order], params.v[order], params.u[order], params.c)
    if check_queries:
        check(learner.ask, learner.rng, params, check_queries)
    if scale != 1.0:  # f(sX) has heads (s^2 W, s u, s v) and the same c
        assert params.u is not None
        params = MultiHeadParams(params.W / scale**2, params.v / scale, params.u / scale, params.c)
    H = params.heads
    found = {"W": params.W, "v": params.v}
    if affine:
        assert params.u is not None
        found.update(u=params.u, c=np.float64(params.c))
    result = Extraction(
        params=found,
        queries=oracle.queries - start,
        method=f"multi-head-{method}" + ("" if heads is not None else "-count"),
        dof=canonical_dof(H, d, affine) if H else 1,
        seconds=time.perf_counter() - clock,
        stages={k: v for k, v in learner.stages.items() if v},
        info={"heads_found": H, "published_bound": published_query_bound(max(H, 1), d), **extra},
        surrogate=params,
    )
    measure(result, oracle, rng, fidelity_samples)
    return result


__all__ = [
    "MAX_HEADS",
    "METHODS",
    "canonical_dof",
    "multi_head",
    "orthogonal_heads",
    "published_query_bound",
]
