"""Exact extraction of one-hidden-layer ReLU networks g(x) = w^T ReLU(A^T x + b) + c from value queries.

The method is the critical-point attack of Carlini-Jagielski-Mironov (2020) and Jagielski et al.
(2020), specialised to one hidden layer:

1. search.py: along random lines, the kinks of g (one per hyperplane a_j^T x + b_j = 0 crossed).
2. neurons.py: the gradient jump across each kink gives the neuron's row and |w_j| ||a_j|| up to
   the orientation of a_j; each neuron is then re-measured far from every other hyperplane.
3. orientation.py: the orientations from the linear term they leave (a linear solve or a 0/1
   program); when that fails the linear term is kept, which is still the same function.
4. output_layer.py: output weights, constant (and linear term) by least squares on the measured
   points beside every hyperplane and on as many points again out to `check_radius` (which
   keep that fit well-conditioned: see _Extractor._add_far_points).
5. check.py: the result is checked on fresh points beside every found hyperplane and out to
   `check_radius`; where it is wrong, lines through the wrong points find the neurons missed
   (e.g. hyperplanes far from the origin), and the fit is redone. A network still wrong after
   `repair_rounds` raises ExtractionError (or, with if_inexact="return", comes back with
   info["exact"] = False and the error bound measured).

Bias-free networks (Daniely-Granot) have every hyperplane through the origin: lines are drawn
away from the origin, biases are fixed to 0 and c to 0.

Neurons whose hyperplane is never crossed cannot be seen by any query: dead neurons (a_j = 0 or
w_j = 0) and exact duplicates (two neurons with one hyperplane merge into one). With `hidden`
given, info reports how many of them were not seen.
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np

from attnlab._random import as_generator
from attnlab.errors import ExtractionError
from attnlab.extract.convention import resolve_method, token_width
from attnlab.extract.ffn.check import check_points, relative_gaps
from attnlab.extract.ffn.neurons import Neuron, NeuronSearch, Sample, refine, same_hyperplane
from attnlab.extract.ffn.orientation import resolve_orientation
from attnlab.extract.ffn.output_layer import Network, fit_output_layer, linear_term
from attnlab.extract.ffn.search import Line, vector_queries
from attnlab.extract.result import Extraction, FidelityUnchecked, fidelity_allowance
from attnlab.oracle import Oracle

METHODS: dict[str, dict[str, Any]] = {
    "critical-points": {
        # lines x0 + t dir, |x0| = scale, |t| <= span * scale; default max(500, 4 sqrt(d) check_radius),
        # so that a line crosses a hyperplane inside the checked ball with probability ~0.8
        "span": None,
        "scale": 1.0,  # the probe scale (lengths are in units of it)
        "min_lines": 2,
        "max_lines": 12,  # stop after a line with no new kink
        "rel_tol": 1e-7,  # slope changes below this (relative) are not kinks
        "max_search_steps": 20000,  # per line
        "orientation_time_limit": 20.0,  # seconds for the 0/1 program (0: never run it)
        "check_radius": 100.0,  # the check reaches |x| = check_radius * scale
        "check_points": None,  # default 2 * neurons + 64
        "exact_tol": 1e-8,  # relative error the check accepts
        "repair_rounds": 3,  # searches through wrong check points
        "if_inexact": "raise",  # or "return": info["exact"] = False and the bound
    },
}


def relu_ffn(
    oracle: Oracle,
    *,
    hidden: int | None = None,
    bias: bool = True,
    method: str = "critical-points",
    method_options: dict | None = None,
    seed=0,
    fidelity_samples: int = 500,
    progress: bool = False,
) -> Extraction:
    """Extract g(x) = w^T ReLU(A^T x + b) + c from an oracle answering one-token sequences [x].

    Parameters
    ----------
    oracle : Oracle whose target maps (B, 1, d) to (B,); d is read from it.
    hidden : the hidden width m if known; only used to report unseen (dead or duplicate) neurons.
    bias : False for the bias-free network (b = 0, c = 0).
    method, method_options : "critical-points" and its options (see METHODS).
    seed : int or numpy Generator (lines, check points).
    fidelity_samples : fresh points (beside every found hyperplane and out to check_radius) for
        the final fidelity check, not counted in `queries`; 0 skips it.
    progress : a tqdm bar over the search lines.

    Returns an Extraction with params A (d, n) unit columns, b (n,), w (n,), c (), linear (d,)
    (zero unless the orientation could not be resolved), stages (queries per stage) and info
    (info["exact"]: the check passed; info["error_bound"]: the largest relative error it saw).
    """
    opts = resolve_method(method, method_options, METHODS)
    if opts["if_inexact"] not in ("raise", "return"):
        raise ValueError(
            f"method_options['if_inexact'] must be 'raise' or 'return', got {opts['if_inexact']!r}"
        )
    d = token_width(oracle)
    if opts["span"] is None:
        opts["span"] = max(500.0, 4.0 * np.sqrt(d) * opts["check_radius"])
    rng = as_generator(seed)
    return _Extractor(oracle, d, bias, opts, rng, progress).run(hidden, fidelity_samples)


class _Extractor:
    """One extraction: the search, the refined neurons, the fit, the check and its repairs."""

    def __init__(
        self,
        oracle: Oracle,
        d: int,
        bias: bool,
        opts: dict[str, Any],
        rng: np.random.Generator,
        progress: bool,
    ):
        self.oracle, self.d, self.bias, self.opts, self.rng = oracle, d, bias, opts, rng
        self.progress, self.scale = progress, float(opts["scale"])
        self.ask = vector_queries(oracle)
        self.stages = {"search": 0, "gradients": 0, "refine": 0, "fit": 0, "check": 0}
        self.search = NeuronSearch(
            self.ask, oracle, self.scale, opts["rel_tol"], opts["max_search_steps"], self.stages
        )
        self.neurons: list[Neuron] = []
        self.samples: list[Sample] = []
        self.dropped = 0
        self.lines = 0
        self.refined_upto = 0  # search.neurons[:refined_upto] have been refined
        # points out to check_radius where the output layer is fitted too (see _add_far_points)
        self.far_points: list[np.ndarray] = []
        self.far_answers: list[float] = []

    def _spent(self, stage: str, before: int) -> None:
        self.stages[stage] += self.oracle.queries - before

    def run(self, hidden: int | None, fidelity_samples: int) -> Extraction:
        started, started_queries = time.perf_counter(), self.oracle.queries
        self._search_random_lines()
        if not self.search.neurons:
            raise ExtractionError(
                "no kink was found on any line: the target looks affine (no active ReLU neuron crosses "
                "the searched region). Raise span in method_options, or check that the oracle answers a "
                "ReLU network."
            )
        self._refine_new()
        self._check_bias_free()
        repairs, net, orientation, fit_residual, worst = 0, None, "", 0.0, np.inf
        while True:
            net, orientation, fit_residual = self._assemble()
            worst, wrong = self._check(net)
            if worst <= self.opts["exact_tol"] or repairs >= self.opts["repair_rounds"]:
                break
            repairs += 1
            if not self._search_through(wrong):
                break
        exact = bool(worst <= self.opts["exact_tol"])
        n = len(self.neurons)
        info: dict[str, Any] = {
            "neurons_found": n,
            "lines": self.lines,
            "kinks_deferred": self.search.deferred,
            "merged_kinks_dropped": self.dropped,
            "orientation": orientation,
            "linear_term_kept": bool(np.any(net.linear != 0)) or orientation == "unresolved",
            "fit_residual": fit_residual,
            "repairs": repairs,
            "exact": exact,
            "error_bound": float(worst),
            # what "exact" covers: the check ran out to here (the search lines reach further)
            "exact_radius": float(self.opts["check_radius"] * self.scale),
        }
        if hidden is not None:
            info["neurons_unseen"] = max(hidden - n, 0)
            if hidden > n:
                info["unseen_reason"] = (
                    f"{hidden - n} of {hidden} neurons showed no kink: dead (a_j = 0 or w_j = 0, no effect on "
                    "g), exact duplicates of another neuron's hyperplane (merged into one neuron with the "
                    "summed weight), or hyperplanes too far out for the search lines (the check covers "
                    f"|x| <= {info['exact_radius']:g}; raise method_options['check_radius'] to reach "
                    "further)"
                )
        queries = self.oracle.queries - started_queries
        elapsed = time.perf_counter() - started
        fidelity, fq = None, 0
        allowed = fidelity_allowance(self.oracle, fidelity_samples) if fidelity_samples else 0
        if fidelity_samples and not allowed:
            info["fidelity_skipped"] = (
                f"no queries left in the budget for {fidelity_samples} fidelity samples"
            )
            warnings.warn(
                f"fidelity unchecked: {info['fidelity_skipped']}", FidelityUnchecked, stacklevel=3
            )
        elif fidelity_samples:
            if allowed < fidelity_samples:
                info["fidelity_note"] = (
                    f"{allowed} of {fidelity_samples} fidelity samples: the rest of the budget"
                )
            fidelity, relative, fq = self._fidelity(net, allowed)
            info["fidelity_relative"] = relative
            if relative > self.opts["exact_tol"]:
                exact = info["exact"] = False
                info["error_bound"] = max(info["error_bound"], relative)
        if not exact and self.opts["if_inexact"] == "raise":
            raise ExtractionError(
                f"the recovered network is not exact: relative error {info['error_bound']:.1e} > exact_tol = "
                f"{self.opts['exact_tol']:.0e} on check points beside the {n} hyperplanes found and out to "
                f"|x| = {self.opts['check_radius'] * self.scale:g}, after {repairs} repair searches. Raise "
                "max_lines or repair_rounds in method_options, or pass method_options={'if_inexact': "
                "'return'} to get the inexact network with its error bound."
                + ("" if self.bias else " (bias=False: if the network has biases, use bias=True.)")
            )
        params = {"A": net.A, "b": net.b, "w": net.w, "c": np.array(net.c), "linear": net.linear}
        dof = n * (self.d + 1) + 1 if self.bias else n * self.d
        if info["linear_term_kept"]:
            dof += self.d

        def surrogate(X: np.ndarray) -> np.ndarray:
            X = np.asarray(X, dtype=np.float64)
            return net(X[:, -1, :] if X.ndim == 3 else X)

        return Extraction(
            params=params,
            queries=queries,
            method="critical-points",
            dof=dof,
            seconds=elapsed,
            stages=dict(self.stages),
            fidelity=fidelity,
            fidelity_queries=fq,
            info=info,
            surrogate=surrogate,
        )

    # -- the search ---------------------------------------------------------------------------
    def _random_line(self) -> Line:
        x0 = self.rng.standard_normal(self.d)
        x0 *= self.scale / np.linalg.norm(x0)
        direction = self.rng.standard_normal(self.d)
        direction /= np.linalg.norm(direction)
        return Line(self.ask, x0, direction, self.opts["span"] * self.scale)

    def _search_random_lines(self) -> None:
        lines = range(self.opts["max_lines"])
        if self.progress:
            from tqdm.auto import tqdm

            lines = tqdm(lines, desc="ReLU FFN lines", leave=False)
        quiet = 0
        for index in lines:
            deferred_before = self.search.deferred
            new = self.search.search(self._random_line())
            self.lines += 1
            quiet = quiet + 1 if new == 0 else 0
            clean = self.search.deferred == deferred_before
            if index + 1 >= self.opts["min_lines"] and (quiet >= 2 or (quiet and clean)):
                break

    def _search_through(self, points: np.ndarray) -> bool:
        """Lines from near the origin through wrong check points; True if a new neuron came."""
        before = len(self.search.neurons)
        for x in points:
            x0 = self.rng.standard_normal(self.d)
            x0 *= self.scale / np.linalg.norm(x0)
            direction = x - x0
            length = float(np.linalg.norm(direction))
            if length == 0.0:
                continue
            self.search.search(
                Line(
                    self.ask,
                    x0,
                    direction / length,
                    max(1.25 * length, self.opts["span"] * self.scale),
                )
            )
            self.lines += 1
        if len(self.search.neurons) == before:
            return False
        self._refine_new()
        self._check_bias_free()
        return True

    def _refine_new(self) -> None:
        """Refine the neurons found since the last call; keep one of each hyperplane."""
        fresh = self.search.neurons[self.refined_upto :]
        self.refined_upto = len(self.search.neurons)
        before = self.oracle.queries
        refined, samples, dropped = refine(self.ask, fresh, self.neurons, self.rng, self.scale)
        self._spent("refine", before)
        for nr in refined:
            # A neuron first seen imprecisely (merged with a near neighbour, or of small weight) may
            # repeat one found elsewhere: keep the better measured of the two (kept twice, the fit
            # would split its weight between them, wrong far out).
            twin = next(
                (
                    k
                    for k, other in enumerate(self.neurons)
                    if same_hyperplane(nr, other, self.scale, loose=True)
                ),
                None,
            )
            if twin is not None:
                dropped += 1
                if nr.reach > self.neurons[twin].reach:
                    self.neurons[twin] = nr
                continue
            self.neurons.append(nr)
        self.samples += samples
        self.dropped += dropped

    def _check_bias_free(self) -> None:
        if self.bias or not self.neurons:
            return
        distances = np.abs(np.array([nr.offset for nr in self.neurons]))
        missing = distances > 1e-6 * self.scale * self.opts["span"]
        # Many hyperplanes off the origin: the network has biases. One or two: more likely a
        # neuron of small weight measured imprecisely; its offset is set to 0 below and the
        # check decides whether the bias-free network is right.
        if missing.sum() > max(2, 0.02 * len(self.neurons)):
            raise ExtractionError(
                f"bias=False, but {int(missing.sum())} of {len(self.neurons)} kink hyperplanes miss the origin "
                f"(by up to {np.max(distances):.2e}): the network has biases; extract it with bias=True"
            )

    # -- the fit and the check ----------------------------------------------------------------
    def _assemble(self) -> tuple[Network, str, float]:
        normals = np.array([nr.normal for nr in self.neurons]).T
        offsets = (
            np.array([nr.offset for nr in self.neurons])
            if self.bias
            else np.zeros(len(self.neurons))
        )
        weights = np.array([nr.weight for nr in self.neurons])
        linear = linear_term(self.samples, normals, offsets, weights)
        contributions = normals * weights
        tol = 1e-6 * (np.max(np.abs(contributions)) + np.max(np.abs(linear)))
        flipped, orientation = resolve_orientation(
            contributions, -linear, tol, self.opts["orientation_time_limit"]
        )
        keep_linear = flipped is None
        if flipped is not None:
            normals[:, flipped] *= -1
            offsets[flipped] *= -1
        n = len(self.neurons)
        unknowns = n + int(self.bias) + (self.d if keep_linear else 0)
        points = np.array([s.point for s in self.samples])
        answers = np.array([s.value for s in self.samples])
        if points.shape[0] < unknowns + 8:
            extra = (
                self.scale
                * self.rng.standard_normal((unknowns + 8 - points.shape[0], self.d))
                / np.sqrt(self.d)
            )
            before = self.oracle.queries
            points, answers = np.vstack([points, extra]), np.concatenate([answers, self.ask(extra)])
            self._spent("fit", before)
            self.samples += [
                Sample(p, float(a), np.full(self.d, np.nan))
                for p, a in zip(extra, answers[-len(extra) :])
            ]
        prior = (normals, offsets, weights, linear if keep_linear else np.zeros(self.d))
        network, residual = fit_output_layer(points, answers, *prior, self.bias, keep_linear)
        # Refit on far points too, once the network found so far explains them (to 1e-6): a
        # neuron not found yet would otherwise be smeared over the whole fit, and the check
        # could no longer point the repair lines at the region beyond its hyperplane.
        self._add_far_points(normals, offsets, unknowns)
        far, far_answers = np.array(self.far_points), np.array(self.far_answers)
        if np.max(relative_gaps(network(far), far_answers, far, self.scale)) <= 1e-6:
            network, residual = fit_output_layer(
                np.vstack([points, far]),
                np.concatenate([answers, far_answers]),
                *prior,
                self.bias,
                keep_linear,
            )
        return network, orientation, residual

    def _add_far_points(self, normals: np.ndarray, offsets: np.ndarray, unknowns: int) -> None:
        """Points out to check_radius for the output-layer fit: one more than its unknowns.

        The samples beside each hyperplane sit within `scale` of the origin, where the weights
        of neurons whose hyperplanes lie far away barely differ from the linear term and the
        constant (those features are nearly always on or always off there): that design is
        ill-conditioned (condition ~1e6 at d = 64, m = 256), and its least-squares correction
        moved measured weights by ~1e-9, off by 1e-8 far out. Far points, half along the found
        normals (so they lie beyond the far hyperplanes), see every neuron both on and off and
        make the design well-conditioned (~1e4). Costs unknowns + 1 queries (stage "fit").
        """
        need = unknowns + 1 - len(self.far_points)
        if need <= 0:
            return
        crossings = np.array([nr.crossing for nr in self.neurons])
        radius = self.opts["check_radius"] * self.scale
        points = check_points(normals, offsets, crossings, 2 * need, radius, self.scale, self.rng)
        points = points[points.shape[0] - need :]  # the far half
        before = self.oracle.queries
        answers = self.ask(points)
        self._spent("fit", before)
        self.far_points += list(points)
        self.far_answers += [float(a) for a in answers]

    def _check_points(self, net: Network, count: int) -> np.ndarray:
        crossings = np.array([nr.crossing for nr in self.neurons])
        return check_points(
            net.A,
            net.b,
            crossings,
            count,
            self.opts["check_radius"] * self.scale,
            self.scale,
            self.rng,
        )

    def _check(self, net: Network) -> tuple[float, np.ndarray]:
        count = self.opts["check_points"] or 2 * len(self.neurons) + 64
        points = self._check_points(net, count)
        before = self.oracle.queries
        answers = self.ask(points)
        self._spent("check", before)
        gaps = relative_gaps(net(points), answers, points, self.scale)
        wrong = np.argsort(gaps)[::-1][:4]
        wrong = wrong[gaps[wrong] > self.opts["exact_tol"]]
        return float(np.max(gaps)), points[wrong]

    def _fidelity(self, net: Network, count: int) -> tuple[float, float, int]:
        points = self._check_points(net, count)
        answers = self.ask(points)
        gaps = np.abs(net(points) - answers)
        relative = relative_gaps(net(points), answers, points, self.scale)
        return float(np.max(gaps)), float(np.max(relative)), count
