"""What an extractor returns, and how its fidelity is measured on fresh queries."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from attnlab.errors import BudgetExhausted
from attnlab.extract.convention import token_width
from attnlab.oracle import Oracle
from attnlab.oracle.sampling import apply_by_length, random_sequences

Surrogate = Callable[[np.ndarray], np.ndarray]


# What each key of Extraction.info means, for every extractor (one meaning per key across
# methods). tests/test_conventions.py runs each public extractor and fails on an undocumented key.
INFO_KEYS: dict[str, str] = {
    "fidelity_skipped": "why the fidelity check did not run or was cut short (budget ran out); fidelity is None",
    "fidelity_note": "the fidelity check used fewer samples than asked: only that many queries were left",
    # single_head
    "rank": "rank of W the extractor assumed or found",
    "rank_mode": "'full', 'known' or 'auto': how the rank was chosen",
    "rank_found": "rank of the recovered W (nuclear-norm)",
    "rank_check_mismatch": "rank=auto: whether the confirming probe disagreed with the detected rank",
    "oracle_calls": "oracle calls (batches) made, not queries",
    "max_abs_logit": "largest |logit| a probe produced (saturation margin)",
    "probe_scale_range": "(smallest, largest) probe scale used",
    "probe_imbalance": "adaptive: largest |b^T v + c| / |a^T v| of a probe (answers dominated by "
    "the second token round alpha more coarsely)",
    "probe_imbalance_mean": "adaptive: probe_imbalance averaged over the probes (enters "
    "estimated_error)",
    "repaired_queries": "adaptive: queries spent reading unsafe entries again (saturated, or a W "
    "logit above SAFE_LOGIT): the queries beyond the limit, with stages['precision_check']",
    "saturated_probes": "adaptive: probes that saturated and were read again, smaller",
    "rescaled_queries": "adaptive: queries spent reading again entries read below 1e-4 of their "
    "line's settled scale (a W far from unit size: the first probes' guess was far off)",
    "design_condition": "paper method: condition number of the probe design",
    "iterations": "nuclear-norm: solver iterations",
    "measurements": "nuclear-norm: rank-one measurements taken",
    "polish_steps": "nuclear-norm: Gauss-Newton polish steps after the convex solve",
    "relative_residual": "nuclear-norm: relative residual of the measurements",
    "solver": "nuclear-norm: the solver used",
    "oracle_seconds": "wall seconds spent inside oracle calls (target + Oracle checks); seconds minus "
    "this is the learner's own time",
    "answer_precision": "adaptive: relative precision of the answers (given, or read off their mantissas)",
    "estimated_error": "adaptive: a-priori relative error of W from the answer precision (None "
    "when float64-looking answers proved coarser: see hidden_precision)",
    "fidelity_over_v": "adaptive, float64 answers: fidelity / |v| (an exact float64 head: ~1e-14)",
    "hidden_precision": "adaptive: fidelity / |v| above 1e-10 on float64-looking answers (a hidden "
    "float32 softmax, or not one head): PrecisionWarning, W may be far off",
    "frames": "multi_head: nearly parallel heads read in frames orthogonal to each direction's "
    "common row",
    "rank_tol": "rank=auto: relative mismatch below which a column counts as dependent",
    "oversampled": "coarse answers, low rank: extra columns/rows of the least-squares fit",
    "discarded_singular": "coarse answers, low rank: first dropped singular value / largest",
    "reread_queries": "coarse answers: warm-up probes read again at the line's final scale",
    "rank_margin": "rank=auto: smallest mismatch of an independent column divided by rank_tol",
    "dense_check_queries": "rank=auto, float64 answers: queries along dense random directions that "
    "confirmed (or, beyond the last 2, refuted) a column's dependence",
    # noisy_single_head
    "error_estimate": "robust: typical and worst-case errors predicted from the noise model",
    "max_token_norm": "robust: the largest token norm a probe used",
    "pilot_retries": "robust: times the pilot probes (max(1, min(4, d // 4))) were re-read with smaller probes",
    "repeats": "answers averaged per probe (paper) / whether exact repeats were used (robust)",
    "rows_per_column": "robust: probe rows per column of W",
    "value_designs": "robust: orthonormal designs read for v",
    "B": "paper: the norm bound ||W||_F <= B used",
    "clipped": "paper: probes whose alpha was clipped before the logit inversion",
    "mu": "paper: min |v_i|, the estimator's per-coordinate margin",
    # relu_ffn
    "fit_residual": "largest residual of the final least-squares fit",
    "kinks_deferred": "kinks set aside for a second pass",
    "linear_term_kept": "whether a linear term remains (orientation unresolved)",
    "lines": "random lines searched for critical points",
    "merged_kinks_dropped": "kinks dropped as duplicates of a known neuron",
    "neurons_found": "hidden neurons recovered",
    "neurons_unseen": "neurons never crossed by a search line (when m is known)",
    "unseen_reason": "why some neurons were not seen",
    "orientation": "how neuron signs were resolved ('linear', 'milp', 'unresolved')",
    "exact": "relu_ffn: the check beside every found hyperplane and out to check_radius passed",
    "exact_radius": "relu_ffn: |x| out to which the check ran ('exact' holds there; the search "
    "lines reach further, but a neuron whose hyperplane lies beyond them is not seen)",
    "error_bound": "relu_ffn: largest relative error the check (and fidelity check) saw",
    "repairs": "relu_ffn: searches through wrong check points before the check passed",
    "fidelity_relative": "relu_ffn: the fidelity check's largest relative error",
    # one_layer_transformer
    "derived_queries": "queries to the antisymmetric derived oracle (2 parent queries each)",
    "ffn": "the FFN stage's own info",
    "ffn_stages": "the FFN stage's query split",
    "head": "the attention stage's single_head info",
    "residual": "whether z(X) includes the residual x_N",
    "value_consistency": "relative gap between v from the FFN and v from the head stage",
    # multi_head, orthogonal_heads
    "anchors": "anchor pairs used by the learner",
    "b_norm": "norm of the recovered offset term",
    "heads_found": "number of canonical heads recovered",
    "isolated_directions": "multi_head(rank, isolate=True): directions read one head at a time",
    "misread_directions": "multi_head(rank): directions replaced because their columns broke the rank",
    "logit_error_bound": "bound on the logit error of the rational fits",
    "published_bound": "the published query bound 4Hd^2 - 2H + 1",
    "refine": "multi_head: the final joint polish (refined, misfit_before, misfit_after: max |f - y|)",
    "subspace_dims": "dimensions of the known orthogonal subspaces",
}

# Parameter names that are also read-only attributes (extraction.W); anything else: params[...]
PARAM_ATTRIBUTES = ("W", "v", "u", "c", "A", "b", "w", "linear")


def _param_property(name: str) -> property:
    def get(self: Extraction) -> np.ndarray:
        try:
            return self.params[name]
        except KeyError:
            raise AttributeError(
                f"this {self.method} extraction has no parameter {name!r}; "
                f"it has {', '.join(self.params) or 'none'}"
            ) from None

    return property(get, doc=f"params[{name!r}]")


@dataclass(repr=False)
class Extraction:
    """Recovered parameters plus the evidence: queries spent (read from the oracle) and fidelity.

    `params` maps names ("W", "v", "u", "c", ...) to arrays; the usual names are also read-only
    attributes (`extraction.W` is `extraction.params["W"]`, see PARAM_ATTRIBUTES). `dof` is the
    number of free parameters of the recovered model class (queries / dof compares methods).
    `stages` splits the query count by stage where an extractor has several. `fidelity` is the
    largest absolute difference between the surrogate and the oracle on `fidelity_queries` fresh
    random queries, which are not part of `queries`. `info` is a plain dict of diagnostics whose
    keys are documented in INFO_KEYS (`describe_info()` pairs them with their meaning).
    """

    params: dict[str, np.ndarray]
    queries: int
    method: str
    dof: int | None = None
    seconds: float = 0.0
    stages: dict[str, int] = field(default_factory=dict)
    fidelity: float | None = None
    fidelity_queries: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    surrogate: Surrogate | None = field(default=None, repr=False, compare=False)

    if TYPE_CHECKING:  # the PARAM_ATTRIBUTES properties, installed after the class

        @property
        def W(self) -> np.ndarray: ...
        @property
        def v(self) -> np.ndarray: ...
        @property
        def u(self) -> np.ndarray: ...
        @property
        def c(self) -> np.ndarray: ...
        @property
        def A(self) -> np.ndarray: ...
        @property
        def b(self) -> np.ndarray: ...
        @property
        def w(self) -> np.ndarray: ...
        @property
        def linear(self) -> np.ndarray: ...

    def predict(self, X) -> np.ndarray:
        """The recovered model's output on a batch (B, N, d)."""
        if self.surrogate is None:
            raise AttributeError("this extraction carries no surrogate model")
        return self.surrogate(np.asarray(X, dtype=np.float64))

    def describe_info(self) -> dict[str, str]:
        """Each key of `info` with its documented meaning."""
        return {key: INFO_KEYS.get(key, "(undocumented)") for key in self.info}

    def check_fidelity(
        self, oracle: Oracle, samples: int, seed: int, lengths=(1, 32)
    ) -> Extraction:
        """Set `fidelity` from `samples` fresh queries (none when 0); see `measure_fidelity`."""
        if samples:
            assert self.surrogate is not None  # every extractor returns the model it recovered
            self.fidelity, self.fidelity_queries = measure_fidelity(
                oracle, self.surrogate, n=samples, lengths=lengths, seed=seed, info=self.info
            )
        return self

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(np.shape(v))}" for k, v in self.params.items())
        fidelity = "unchecked" if self.fidelity is None else f"{self.fidelity:.1e}"
        return (
            f"Extraction(method={self.method!r}, queries={self.queries}, dof={self.dof}, "
            f"fidelity={fidelity}, params: {shapes})"
        )

    def to_module(self):
        """The recovered head as a float64 torch module (models.attention): SingleHeadAttention
        from (W, v), AffineHead from (W, u, v, c). Other extractions raise ValueError."""
        from attnlab.models.attention import AffineHead, SingleHeadAttention

        p = self.params
        if {"W", "v"} <= set(p) and "A" not in p and np.ndim(p["W"]) == 2:
            if "u" in p or "c" in p:
                d = np.shape(p["v"])[0]
                return AffineHead(
                    p["W"], p.get("u", np.zeros(d)), p["v"], float(np.asarray(p.get("c", 0.0)))
                )
            return SingleHeadAttention(p["W"], p["v"])
        raise ValueError(
            f"to_module builds single heads (params W, v [, u, c]); this {self.method} extraction "
            f"has params {', '.join(p) or 'none'}: use predict() for its outputs"
        )

    def _repr_html_(self) -> str:
        """A short table for notebooks: counts, fidelity and parameter shapes, never the arrays."""
        from html import escape

        rows = [
            ("method", self.method),
            ("queries", f"{self.queries:,}"),
            ("dof", self.dof),
            ("queries / dof", f"{self.queries / self.dof:.2f}" if self.dof else "n/a"),
            (
                "fidelity (max abs error)",
                "unchecked"
                if self.fidelity is None
                else f"{self.fidelity:.2e} on {self.fidelity_queries:,} fresh queries",
            ),
            ("seconds", f"{self.seconds:.2f}"),
            ("params", ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in self.params.items())),
        ]
        rows += [(f"stage {k}", f"{v:,} queries") for k, v in self.stages.items()]
        body = "".join(
            f"<tr><th style='text-align:left'>{escape(str(k))}</th><td>{escape(str(v))}</td></tr>"
            for k, v in rows
        )
        return f"<table><caption>Extraction</caption>{body}</table>"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (arrays become nested lists)."""
        return {
            "method": self.method,
            "queries": self.queries,
            "dof": self.dof,
            "seconds": self.seconds,
            "stages": dict(self.stages),
            "fidelity": self.fidelity,
            "fidelity_queries": self.fidelity_queries,
            "info": _jsonable(self.info),
            "params": {k: np.asarray(v).tolist() for k, v in self.params.items()},
        }


for _name in PARAM_ATTRIBUTES:
    setattr(Extraction, _name, _param_property(_name))
del _name


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


class FidelityUnchecked(UserWarning):
    """The extraction finished but its fidelity check could not run (the budget ran out)."""


def fidelity_allowance(oracle: Oracle, n: int) -> int:
    """How many of n fidelity queries the oracle's budgets (local, and a service's) leave room for."""
    allowed = n
    remaining = getattr(oracle, "remaining", None)
    if isinstance(remaining, (int, np.integer)):
        allowed = min(allowed, int(remaining))
    service_left = getattr(getattr(oracle, "http_target", None), "budget_left", None)
    if isinstance(service_left, (int, np.integer)):
        allowed = min(allowed, int(service_left))
    return max(allowed, 0)


def measure_fidelity(
    oracle: Oracle,
    surrogate: Surrogate,
    n: int = 1000,
    lengths=(1, 32),
    seed: int = 12345,
    scale: float = 1.0,
    info: dict[str, Any] | None = None,
) -> tuple[float | None, int]:
    """Largest |surrogate - oracle| over n fresh random sequences; returns (error, queries it cost).

    Never loses the finished extraction: the check spends at most what the budget leaves (noted in
    `info["fidelity_note"]`), and when nothing is left or the budget runs out during it, returns
    (None, queries spent), records why in `info["fidelity_skipped"]` and warns FidelityUnchecked.
    """
    before = oracle.queries
    allowed = fidelity_allowance(oracle, n)

    def skipped(reason: str) -> tuple[None, int]:
        if info is not None:
            info["fidelity_skipped"] = reason
        warnings.warn(
            f"fidelity unchecked: {reason}; the extraction itself is complete",
            FidelityUnchecked,
            stacklevel=3,
        )
        return None, oracle.queries - before

    if allowed == 0:
        return skipped(f"no queries left in the budget for the {n} fidelity samples")
    if allowed < n and info is not None:
        info["fidelity_note"] = (
            f"{allowed} of {n} fidelity samples: only {allowed} queries were left"
        )
    rng = np.random.default_rng(seed)
    seqs = random_sequences(rng, token_width(oracle), allowed, lengths, scale)
    try:
        answers = oracle.query_many(seqs)
    except BudgetExhausted as exc:
        return skipped(f"the budget ran out during the fidelity check ({exc})")
    spent = oracle.queries - before
    predicted = apply_by_length(surrogate, seqs)
    return float(np.max(np.abs(predicted - answers))), spent
