"""The kink search on one line: where g restricted to x0 + t*dir changes slope, and each piece's line.

g is piecewise linear along any line, with one kink per hyperplane a_j^T x + b_j = 0 it crosses.
A recursive search predicts each kink as the intersection of the two outer linear pieces of an
interval and verifies it with three queries; two interior points per piece then give every
piece's line exactly, and the kinks follow as intersections of neighbouring pieces.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.oracle import Oracle

Ask = Callable[[np.ndarray], np.ndarray]

# Slopes are differenced over STEP * |x| (relative to the distance from the origin).
STEP = 1e-6


def vector_queries(oracle: Oracle) -> Ask:
    """Ask the oracle about vectors: points (n, d) are sent as one-token sequences (n, 1, d)."""

    def ask(points: np.ndarray) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64)
        return np.asarray(oracle(points[:, None, :]), dtype=np.float64).reshape(points.shape[0])

    return ask


class Line:
    """g restricted to x0 + t*dir, t in [-span, span], with queries batched."""

    def __init__(self, ask: Ask, x0: np.ndarray, direction: np.ndarray, span: float):
        self.ask, self.x0, self.dir, self.span = ask, x0, direction, span

    def point(self, t) -> np.ndarray:
        return self.x0[None, :] + np.atleast_1d(t)[:, None] * self.dir[None, :]

    def __call__(self, t) -> np.ndarray:
        return self.ask(self.point(np.asarray(t, dtype=np.float64)))


def rough_kinks(line: Line, rel_tol: float, max_steps: int) -> tuple[list[float], set[int]]:
    """Separate the kinks on [-span, span]: rough locations, and which are unresolved clusters.

    Steps and tolerances are local: a value at x rounds by about rho (|g| + L |x|) (rho: the
    target's relative rounding, read from second differences at the ends; L: the slope scale),
    so slopes are differenced over steps of STEP |x|. Near the origin, where the kinks of a
    wide network crowd, steps are then far finer than a fraction of the whole span, and few
    kinks come out as unresolved clusters.
    """
    T = line.span
    x0_norm2, x0_dir = float(line.x0 @ line.x0), float(line.x0 @ line.dir)

    def size(t):  # |x0 + t dir|, the distance from the origin
        return np.sqrt(max(x0_norm2 + 2 * t * x0_dir + t * t, 0.0)) + 1e-9 * T

    def step_at(t):
        return STEP * size(t)

    s = step_at(T)
    s_left = step_at(-T)
    probe = line([-T, -T + s_left, -T + 2 * s_left, T - 2 * s, T - s, T])
    ends = probe[[0, 1, 4, 5]]
    slope_scale = max(abs(ends[1] - ends[0]) / s_left, abs(ends[3] - ends[2]) / s) + 1e-300
    # The target's own rounding, from second differences where g is linear (the ends): a wide
    # network sums many terms and rounds well above eps * |g|.
    noise = max(abs(probe[0] - 2 * probe[1] + probe[2]), abs(probe[3] - 2 * probe[4] + probe[5]))
    eps = np.finfo(float).eps
    rho = max(32 * eps, 4 * noise / (np.max(np.abs(ends)) + slope_scale * size(T)))

    def floor(t, g):  # rounding of a value measured at t
        return rho * (abs(g) + slope_scale * size(t))

    def slope_error(t, g, h):
        return 2 * floor(t, g) / h

    # An interval: (l, r, g(l), g(r), right-slope at l, left-slope at r, their errors).
    stack = [
        (
            -T,
            T,
            ends[0],
            ends[3],
            (ends[1] - ends[0]) / s_left,
            (ends[3] - ends[2]) / s,
            slope_error(-T, ends[0], s_left),
            slope_error(T, ends[3], s),
        )
    ]
    kinks, clusters, steps = [], [], 0
    while stack:
        l, r, gl, gr, sl, sr, el, er = stack.pop()
        steps += 1
        if steps > max_steps:
            raise ExtractionError(
                f"the kink search on a line did not converge after {max_steps} steps; the target may "
                "not be a one-hidden-layer ReLU network, or it is too wide for max_search_steps "
                "(raise it in method_options)"
            )
        chord = gr - gl - sl * (r - l)
        if abs(sr - sl) <= rel_tol * slope_scale + el + er and abs(chord) <= floor(l, gl) + floor(
            r, gr
        ) + el * (r - l):
            continue
        mid = 0.5 * (l + r)
        if r - l <= 8 * step_at(mid):
            clusters.append(mid)  # kinks closer than the search resolves
            continue
        # The one-kink test compares g at c -+ h with the outer lines, predicted from the ends
        # with slopes known to el, er: h must make a kink's slope change stand out of that.
        jump = abs(sr - sl)
        value_floor = rho * (max(abs(gl), abs(gr)) + slope_scale * max(size(l), size(r)))
        tol = 2 * value_floor + max(el, er) * (r - l)
        need = 8 * tol / max(jump, 1e-300)
        c = mid
        if jump > rel_tol * slope_scale + el + er:
            crossing = (gr - gl + sl * l - sr * r) / (sl - sr)
            h = max(step_at(crossing), need) if l < crossing < r else np.inf
            if l + 2 * h < crossing < r - 2 * h:
                c = crossing
        h = max(step_at(c), need)
        testable = l + 2 * h < c < r - 2 * h
        if not testable:
            h = step_at(c)
        gm, gc, gp = line([c - h, c, c + h])
        left_slope, right_slope = (gc - gm) / h, (gp - gc) / h
        ec = slope_error(c, gc, h)
        # One kink iff the points beside c lie on the outer lines (c itself may miss the kink by
        # the rounding of the end slopes, so c's own value and slopes are not compared).
        if (
            testable
            and abs(gm - (gl + sl * (c - h - l))) <= floor(l, gl) + floor(c, gm) + el * (c - h - l)
            and abs(gp - (gr + sr * (c + h - r))) <= floor(r, gr) + floor(c, gp) + er * (r - c - h)
        ):
            kinks.append(c)
        else:
            stack.append((l, c, gl, gc, sl, left_slope, el, ec))
            stack.append((c, r, gc, gr, right_slope, sr, ec, er))
    everything = sorted(kinks + clusters)
    cluster_set = set(clusters)
    return everything, {i for i, t in enumerate(everything) if t in cluster_set}


def pieces(line: Line, kinks: list[float]):
    """Exact (slope, intercept) of every linear piece; the kinks as their intersections.

    Returns the piece bounds, slopes, slope jumps at the kinks and the kinks' exact positions.
    """
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
