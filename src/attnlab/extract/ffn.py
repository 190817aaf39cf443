"""Exact extraction of one-hidden-layer ReLU networks g(x) = w^T ReLU(A^T x + b) + c from value queries.

The method is the critical-point attack of Carlini-Jagielski-Mironov (2020) and Jagielski et al.
(2020), specialised to one hidden layer:

1. Along a random line x0 + t*dir, g is piecewise linear in t with one kink per neuron whose
   hyperplane a_j^T x + b_j = 0 the line crosses. A recursive search that predicts each kink as
   the intersection of the two outer linear pieces (and verifies it with three queries) separates
   the kinks; two interior points per linear piece then give every piece's line exactly, and
   the kinks are the intersections of neighbouring pieces.
2. The full gradient of g on both sides of a kink (forward differences inside each piece) jumps by
   J = w_j a_j sign(a_j^T dir): the neuron's row up to scale, with sign(w_j) = sign(J^T dir) and
   |w_j| ||a_j|| = ||J||. Only the orientation of a_j stays unknown.
3. Orientation: writing every neuron with a guessed orientation leaves a linear term
   p = -sum_{flipped} w_j a_j, measurable from any piece's gradient. The flipped set solves
   K f = -p over f in {0,1}^m (K's columns are the neurons' w_j a_j): a linear solve when K has
   full column rank (m <= d), else a small 0/1 program (scipy's HiGHS MILP). When that fails the
   extraction keeps the linear term (still functionally exact) and says so in info.
4. Output weights, the constant and (if kept) the linear term by least squares on fresh points.

Bias-free networks (Daniely-Granot) have every hyperplane through the origin: lines are drawn
away from the origin, biases are fixed to 0 and c to 0.

Neurons whose hyperplane is never crossed cannot be seen by any query: dead neurons (a_j = 0 or
w_j = 0) and exact duplicates (two neurons with one hyperplane merge into one). With `m` given,
info reports how many of the m neurons were not seen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, linear_sum_assignment, milp

from attnlab.errors import ExtractionError
from attnlab.extract.result import Extraction, measure_fidelity
from attnlab.oracle import Oracle


# Kinks closer than a line's search resolves are searched again on a segment ZOOM times as long
# around them, up to ZOOM_LEVELS times.
ZOOM, ZOOM_LEVELS = 1e-3, 2


def vector_queries(oracle: Oracle):
    """Ask the oracle about vectors: points (n, d) are sent as one-token sequences (n, 1, d)."""

    def ask(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.asarray(oracle(points[:, None, :]), dtype=np.float64).reshape(points.shape[0])

    return ask


@dataclass
class _Neuron:
    normal: np.ndarray  # unit row direction (orientation still a guess)
    offset: float       # b / ||a|| for that orientation
    weight: float       # w ||a||, sign(w) known exactly
    crossing: np.ndarray  # a point on the hyperplane


class _Line:
    """g restricted to x0 + t*dir, t in [-span, span], with queries batched."""

    def __init__(self, ask, x0: np.ndarray, direction: np.ndarray, span: float):
        self.ask, self.x0, self.dir, self.span = ask, x0, direction, span

    def point(self, t) -> np.ndarray:
        return self.x0[None, :] + np.atleast_1d(t)[:, None] * self.dir[None, :]

    def __call__(self, t) -> np.ndarray:
        return self.ask(self.point(np.asarray(t, dtype=np.float64)))


def _rough_kinks(line: _Line, rel_tol: float, max_steps: int) -> tuple[list[float], set[int]]:
    """Separate the kinks of line.g on [-span, span]: rough locations, and which are unresolved clusters."""
    T = line.span
    step = 1e-6 * T
    ends = line([-T, -T + step, T - step, T])
    slope_scale = max(abs(ends[1] - ends[0]), abs(ends[3] - ends[2])) / step + 1e-300
    value_scale = np.max(np.abs(ends)) + slope_scale * T
    # Slopes come from differences over `step`: their rounding error is ~ eps * value_scale / step.
    tol_s = rel_tol * slope_scale + 64 * np.finfo(float).eps * value_scale / step

    def tol_v(distance):
        # A value predicted from a line through a known point, with a slope measured over `step`,
        # is off by rounding amplified by distance / step.
        return 32 * np.finfo(float).eps * value_scale * (1 + distance / step)

    # An interval: (l, r, g(l), g(r), right-slope at l, left-slope at r).
    stack = [(-T, T, ends[0], ends[3], (ends[1] - ends[0]) / step, (ends[3] - ends[2]) / step)]
    kinks, clusters, steps = [], [], 0
    while stack:
        l, r, gl, gr, sl, sr = stack.pop()
        steps += 1
        if steps > max_steps:
            raise ExtractionError(
                f"the kink search on a line did not converge after {max_steps} steps; the target may not be a "
                "one-hidden-layer ReLU network, or it is too wide for max_search_steps (raise it)")
        chord = gr - gl - sl * (r - l)
        if abs(sr - sl) <= tol_s and abs(chord) <= tol_v(r - l):
            continue
        width = r - l
        if width <= 8 * step:
            clusters.append(0.5 * (l + r))  # kinks closer than the search resolves
            continue
        c = 0.5 * (l + r)
        if abs(sr - sl) > tol_s:
            crossing = (gr - gl + sl * l - sr * r) / (sl - sr)
            if l + 2 * step < crossing < r - 2 * step:
                c = crossing
        gm, gc, gp = line([c - step, c, c + step])
        left_slope, right_slope = (gc - gm) / step, (gp - gc) / step
        # One kink iff the points beside c lie on the outer lines (c itself may miss the kink by
        # the rounding of the end slopes, so c's own value and slopes are not compared).
        if (abs(gm - (gl + sl * (c - step - l))) <= tol_v(c - l)
                and abs(gp - (gr + sr * (c + step - r))) <= tol_v(r - c)):
            kinks.append(c)
        else:
            stack.append((l, c, gl, gc, sl, left_slope))
            stack.append((c, r, gc, gr, right_slope, sr))
    everything = sorted(kinks + clusters)
    cluster_set = set(clusters)
    return everything, {i for i, t in enumerate(everything) if t in cluster_set}


def _pieces(line: _Line, kinks: list[float]):
    """Exact line (slope, intercept) of every linear piece and the kinks as their intersections."""
    bounds = np.concatenate([[-line.span], kinks, [line.span]])
    lo, hi = bounds[:-1], bounds[1:]
    ts = np.stack([lo + 0.25 * (hi - lo), lo + 0.75 * (hi - lo)], axis=1)
    vals = line(ts.ravel()).reshape(-1, 2)
    slopes = (vals[:, 1] - vals[:, 0]) / (ts[:, 1] - ts[:, 0])
    intercepts = vals[:, 0] - slopes * ts[:, 0]
    jumps = slopes[1:] - slopes[:-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        exact = (intercepts[:-1] - intercepts[1:]) / (slopes[1:] - slopes[:-1])
    exact = np.where(np.isfinite(exact), exact, np.asarray(kinks, dtype=np.float64))
    return bounds, slopes, jumps, exact


def _gradient(ask, point: np.ndarray, step: float, slope: float, direction: np.ndarray, tol: float):
    """Forward-difference gradient inside one linear piece, checked against the piece's exact slope."""
    d = point.shape[0]
    for _ in range(3):
        probes = np.vstack([point, point + step * np.eye(d)])
        vals = ask(probes)
        grad = (vals[1:] - vals[0]) / step
        if abs(grad @ direction - slope) <= tol:
            return grad
        step *= 1e-3  # a step crossed another neuron's hyperplane: retry closer
    return None


def _same_hyperplane(a: _Neuron, b: _Neuron, scale: float) -> bool:
    cosine = float(a.normal @ b.normal)
    return abs(cosine) > 1 - 1e-8 and abs(a.offset - np.sign(cosine) * b.offset) <= 1e-5 * scale


def _refine(ask, neurons: list[_Neuron], rng: np.random.Generator, scale: float, tries: int = 8):
    """Re-measure every neuron's gradient jump far from all other hyperplanes, now that they are known.

    The first pass had to difference with steps small enough to stay inside pieces it could not see;
    here each step is half the distance to the nearest hyperplane, which makes the rows exact to
    rounding. A neuron whose jump vanishes away from the point it was found at was two kinks seen
    as one; it is dropped.
    """
    d = neurons[0].normal.shape[0]
    normals = np.array([nr.normal for nr in neurons]).T
    offsets = np.array([nr.offset for nr in neurons])
    refined, samples, dropped = [], [], 0
    for j, nr in enumerate(neurons):
        best_r, best_x = -1.0, None
        for _ in range(tries):
            u = rng.standard_normal(d)
            u -= (u @ nr.normal) * nr.normal
            x = nr.crossing + scale * rng.uniform(0.2, 1.0) * u / np.linalg.norm(u)
            dist = np.abs(normals.T @ x + offsets)
            dist[j] = np.inf
            if dist.min() > best_r:
                best_r, best_x = float(dist.min()), x
        r = min(0.4 * best_r, scale)
        n, x, h = nr.normal, best_x, 0.5 * r
        plus, minus = x + r * n, x - r * n
        vals = ask(np.vstack([plus, plus + h * np.eye(d), minus, minus + h * np.eye(d)]))
        grad_plus = (vals[1:d + 1] - vals[0]) / h
        grad_minus = (vals[d + 2:] - vals[d + 1]) / h
        jump = grad_plus - grad_minus
        size = np.linalg.norm(jump)
        along = float(jump @ n)
        if size <= 1e-6 * abs(nr.weight) or abs(along) < (1 - 1e-6) * size or np.sign(along) != np.sign(nr.weight):
            dropped += 1
            continue
        normal = np.sign(along) * jump / size
        slope_plus, slope_minus = grad_plus @ n, grad_minus @ n
        s_star = (vals[d + 1] - vals[0] + (slope_plus + slope_minus) * r) / (slope_plus - slope_minus)
        crossing = x + s_star * n
        refined.append(_Neuron(normal, -float(normal @ crossing), float(np.sign(along) * size), crossing))
        samples += [(grad_plus, plus), (grad_minus, minus)]
    return refined, samples, dropped


def _resolve_orientation(K: np.ndarray, target: np.ndarray, tol: float, time_limit: float):
    """f in {0,1}^n with K f = target, or None. Linear solve when possible, else a 0/1 MILP."""
    n = K.shape[1]
    if n == 0:
        return np.zeros(0, dtype=bool), "exact"
    if np.linalg.matrix_rank(K) == n:
        f = np.linalg.lstsq(K, target, rcond=None)[0]
        rounded = np.round(f)
        if np.all(np.abs(f - rounded) < 1e-4) and np.all((rounded == 0) | (rounded == 1)):
            if np.max(np.abs(K @ rounded - target)) <= tol:
                return rounded.astype(bool), "linear"
        return None, "unresolved"
    result = milp(
        c=np.zeros(n), integrality=np.ones(n), bounds=Bounds(0, 1),
        constraints=[LinearConstraint(K, target - tol, target + tol)],
        options={"time_limit": time_limit, "disp": False},
    )
    if result.x is None:
        return None, "unresolved"
    f = np.round(result.x)
    if np.max(np.abs(K @ f - target)) > 10 * tol:
        return None, "unresolved"
    return f.astype(bool), "milp"


def relu_ffn(oracle: Oracle, d: int | None = None, *, bias: bool = True, m: int | None = None,
             span: float = 500.0, scale: float = 1.0, min_lines: int = 2, max_lines: int = 12,
             fit_points: int | None = None, orientation_time_limit: float = 20.0,
             rel_tol: float = 1e-7, max_search_steps: int = 20000, fidelity_queries: int = 500,
             seed: int | np.random.Generator | None = 0) -> Extraction:
    """Extract g(x) = w^T ReLU(A^T x + b) + c from an oracle answering one-token sequences [x].

    Parameters
    ----------
    oracle : Oracle whose target maps (B, 1, d) to (B,).
    d : input width (read from the oracle when omitted).
    bias : False for the bias-free network (b = 0, c = 0).
    m : the width if known; only used to report unseen (dead or duplicate) neurons.
    span, scale : lines are x0 + t*dir with |x0| = scale and t in [-span*scale, span*scale].
    min_lines, max_lines : lines searched; the search stops after a line whose every kink is a known neuron.
    fit_points : fresh points for the final least squares (default 2 * (neurons + d + 1)).

    Returns an Extraction with params A (d, n) unit columns, b (n,), w (n,), c (), linear (d,)
    (zero unless the orientation could not be resolved), stages (queries per stage) and info.
    """
    d = d if d is not None else oracle.d
    if d is None:
        raise ValueError("pass d (the input width): the oracle has not seen a query yet")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    ask = vector_queries(oracle)
    start, start_queries = time.perf_counter(), oracle.queries
    stages = {"search": 0, "gradients": 0, "refine": 0, "fit": 0}
    neurons: list[_Neuron] = []
    lines_used, deferred, quiet_lines = 0, 0, 0

    def spend(stage, before):
        stages[stage] += oracle.queries - before

    def scan(line: _Line) -> tuple[int, list[tuple[_Line, float]]]:
        """Find the kinks on one line and add the neurons not seen before.

        Returns how many were new and the kinks too close to a neighbour to measure here.
        """
        before = oracle.queries
        rough, clustered = _rough_kinks(line, rel_tol, max_search_steps)
        bounds, slopes, jumps, exact = _pieces(line, rough)
        spend("search", before)
        with np.errstate(divide="ignore", invalid="ignore"):  # a hyperplane parallel to the line: never crossed
            known_t = np.array([-(nr.normal @ line.x0 + nr.offset) / (nr.normal @ line.dir) for nr in neurons])
        new_count, pending = 0, []
        widths = np.diff(bounds)
        grads: dict[int, np.ndarray | None] = {}

        def piece_gradient(i):
            if i not in grads:
                before_g = oracle.queries
                point = line.point(0.5 * (bounds[i] + bounds[i + 1]))[0]
                tol = 1e-8 * (np.max(np.abs(slopes)) + 1e-300)
                step = 1e-3 * min(widths[i], scale)
                grads[i] = _gradient(ask, point, step, slopes[i], line.dir, tol)
                spend("gradients", before_g)
            return grads[i]

        noise_floor = 1e-7 * np.max(np.abs(slopes))
        for k, t in enumerate(exact):
            if abs(jumps[k]) <= noise_floor:
                continue  # rounding, not a kink (short segments far out see large values, small slopes)
            # (a known hyperplane's predicted crossing is off by its rounding times the distance
            # from the origin, which is large on the short segments around far-out kinks)
            if known_t.size and np.min(np.abs(known_t - t)) <= 1e-6 * (scale + abs(t) + np.linalg.norm(line.x0)):
                continue
            if k in clustered or min(widths[k], widths[k + 1]) < 1e-6 * line.span:
                pending.append((line, float(t)))  # neighbours too close to measure cleanly at this scale
                continue
            left, right = piece_gradient(k), piece_gradient(k + 1)
            if left is None or right is None:
                pending.append((line, float(t)))
                continue
            jump = right - left
            size = np.linalg.norm(jump)
            if size <= 1e-12:
                continue
            normal = jump / size
            crossing = line.point(t)[0]
            candidate = _Neuron(normal, -float(normal @ crossing), float(np.sign(jumps[k]) * size), crossing)
            if any(_same_hyperplane(candidate, other, scale) for other in neurons):
                continue
            neurons.append(candidate)
            new_count += 1
        return new_count, pending

    for line_index in range(max_lines):
        x0 = rng.standard_normal(d)
        x0 *= scale / np.linalg.norm(x0)
        direction = rng.standard_normal(d)
        direction /= np.linalg.norm(direction)
        new_count, pending = scan(_Line(ask, x0, direction, span * scale))
        lines_used += 1
        # Kinks too close together: look again on the same line, a thousand times closer up.
        for _ in range(ZOOM_LEVELS):
            closer = []
            for parent, t in pending:
                found, still = scan(_Line(ask, parent.point(t)[0], parent.dir, ZOOM * parent.span))
                new_count += found
                closer += still
            pending = closer
        deferred += len(pending)
        quiet_lines = quiet_lines + 1 if new_count == 0 else 0
        if line_index + 1 >= min_lines and (quiet_lines >= 2 or (quiet_lines and not pending)):
            break

    if not neurons:
        raise ExtractionError(
            "no kink was found on any line: the target looks affine (no active ReLU neuron crosses the "
            "searched region). Raise span, or check that the oracle answers a ReLU network.")

    before = oracle.queries
    neurons, linear_samples, dropped = _refine(ask, neurons, rng, scale)
    # A neuron first seen merged with a near neighbour is exact after refinement, and may now
    # repeat one found cleanly on another line: keep one of each hyperplane.
    unique: list[_Neuron] = []
    for nr in neurons:
        if not any(_same_hyperplane(nr, other, scale) for other in unique):
            unique.append(nr)
    dropped += len(neurons) - len(unique)
    neurons = unique
    spend("refine", before)

    normals = np.array([nr.normal for nr in neurons]).T          # (d, n)
    offsets = np.array([nr.offset for nr in neurons]) if bias else np.zeros(len(neurons))
    weights = np.array([nr.weight for nr in neurons])
    if not bias:
        distances_to_origin = np.abs(np.array([nr.offset for nr in neurons]))
        if np.max(distances_to_origin) > 1e-6 * scale * span:
            raise ExtractionError(
                "bias=False, but some kink hyperplanes miss the origin (by up to "
                f"{np.max(distances_to_origin):.2e}): the network has biases; extract it with bias=True")

    # The linear term left by the guessed orientations, averaged over every measured piece.
    contributions = normals * weights
    estimates = [grad - contributions @ (normals.T @ pt + offsets > 0) for grad, pt in linear_samples]
    linear = np.mean(estimates, axis=0)
    tol = 1e-6 * (np.max(np.abs(contributions)) + np.max(np.abs(linear)))
    flipped, resolution = _resolve_orientation(contributions, -linear, tol, orientation_time_limit)
    if flipped is not None:
        normals[:, flipped] *= -1
        offsets[flipped] *= -1
    has_linear = flipped is None
    weights = weights.copy()

    # Output layer (and constant, and the linear term if kept) by least squares on fresh points.
    n = len(neurons)
    radius = scale * max(1.0, 2.0 * float(np.median(np.abs(offsets))) if bias else 1.0)
    count = fit_points or 2 * (n + d + 1)
    points = radius * rng.standard_normal((count, d)) / np.sqrt(d) * 3.0
    before = oracle.queries
    answers = ask(points)
    spend("fit", before)
    features = [np.maximum(points @ normals + offsets, 0.0)]
    if bias:
        features.append(np.ones((count, 1)))
    if has_linear:
        features.append(points)
    design = np.hstack(features)
    # A minimum-norm correction to the weights the jumps measured: directions the fit points do
    # not excite keep the measured values instead of drifting.
    prior = np.concatenate([weights, [0.0] if bias else [], linear if has_linear else []])
    correction, *_ = np.linalg.lstsq(design, answers - design @ prior, rcond=None)
    solution = prior + correction
    w_fit = solution[:n]
    c_fit = float(solution[n]) if bias else 0.0
    linear_fit = solution[n + int(bias):] if has_linear else np.zeros(d)
    fit_residual = float(np.max(np.abs(design @ solution - answers)))

    params = {"A": normals, "b": offsets, "w": w_fit, "c": np.array(c_fit), "linear": linear_fit}

    def surrogate(X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        x = X[:, -1, :] if X.ndim == 3 else X
        return np.maximum(x @ normals + offsets, 0.0) @ w_fit + c_fit + x @ linear_fit

    queries = oracle.queries - start_queries
    info = {
        "neurons_found": n, "lines": lines_used, "kinks_deferred": deferred, "merged_kinks_dropped": dropped,
        "orientation": resolution, "linear_term_kept": has_linear, "fit_residual": fit_residual,
    }
    if m is not None:
        info["neurons_unseen"] = max(m - n, 0)
        if m > n:
            info["unseen_reason"] = (
                f"{m - n} of {m} neurons showed no kink: dead (a_j = 0 or w_j = 0, no effect on g) or exact "
                "duplicates of another neuron's hyperplane (merged into one neuron with the summed weight)")
    elapsed = time.perf_counter() - start
    fidelity, fq = (None, 0)
    if fidelity_queries:
        fidelity, fq = measure_fidelity(oracle, surrogate, n=fidelity_queries, lengths=(1, 1),
                                        seed=int(rng.integers(2**31)), scale=3.0 * radius)
    dof = n * (d + 1) + 1 if bias else n * d
    return Extraction(params=params, queries=queries, method="critical-points", dof=dof, seconds=elapsed,
                      stages=stages, fidelity=fidelity, fidelity_queries=fq, info=info, surrogate=surrogate)


def ffn_parameter_error(extraction: Extraction, A, w, b=None, c: float = 0.0) -> dict:
    """Compare an extraction with the true network modulo neuron permutation and positive rescaling.

    Evaluation only (it reads the ground truth). Neurons are matched by |cosine| of their rows;
    returns the largest error of the unit rows and scaled biases (with orientation), of the
    output weights w_j ||a_j||, the number matched, and how many matched rows had the wrong
    orientation (nonzero only when the orientation was left unresolved).
    """
    A, w = np.asarray(A, dtype=np.float64), np.asarray(w, dtype=np.float64)
    b = np.zeros(A.shape[1]) if b is None else np.asarray(b, dtype=np.float64)
    norms = np.linalg.norm(A, axis=0)
    alive = (norms > 0) & (w != 0)
    true_rows = A[:, alive] / norms[alive]
    true_b, true_w = b[alive] / norms[alive], w[alive] * norms[alive]
    rows, offsets, weights = extraction.params["A"], extraction.params["b"], extraction.params["w"]
    similarity = np.abs(true_rows.T @ rows)
    ti, ei = linear_sum_assignment(-similarity)
    signs = np.sign(np.sum(true_rows[:, ti] * rows[:, ei], axis=0))
    row_err = np.max(np.abs(rows[:, ei] * signs - true_rows[:, ti])) if ti.size else 0.0
    bias_err = np.max(np.abs(offsets[ei] * signs - true_b[ti])) if ti.size else 0.0
    weight_err = np.max(np.abs(weights[ei] - true_w[ti])) / np.max(np.abs(true_w)) if ti.size else 0.0
    return {
        "matched": int(ti.size), "true_alive": int(alive.sum()),
        "row_error": float(row_err), "bias_error": float(bias_err), "weight_rel_error": float(weight_err),
        "wrong_orientation": int(np.sum(signs < 0)), "c_error": float(abs(float(extraction.params["c"]) - c)),
    }
