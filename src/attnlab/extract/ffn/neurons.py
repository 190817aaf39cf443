"""Hidden neurons from kinks: the gradient jump across each kink, deduplicated over lines, refined.

The full gradient of g on both sides of a kink jumps by J = w_j a_j sign(a_j^T dir): the
neuron's row up to scale, with sign(w_j) = sign(J^T dir) and |w_j| ||a_j|| = ||J||. Only the
orientation of a_j stays unknown (see orientation.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from attnlab.extract.ffn.search import Ask, Line, pieces, rough_kinks

# Kinks closer than a line's search resolves are searched again on a segment ZOOM times as
# long around them (the cluster spans at most 8 search steps = 8e-6 span; 32e-6 leaves room).
ZOOM, ZOOM_LEVELS = 3.2e-5, 2
# A zoomed segment shorter than this (relative to the probe scale) is below float64 resolution.
SHORTEST_ZOOM = 1e-6


@dataclass
class Neuron:
    normal: np.ndarray  # unit row direction (orientation still a guess)
    offset: float  # b / ||a|| for that orientation
    weight: float  # w ||a||, sign(w) known exactly
    crossing: np.ndarray  # a point on the hyperplane
    reach: float = 0.0  # refined: distance from the measuring point to the nearest other hyperplane


@dataclass
class Sample:
    """A point with its measured value and gradient, inside one linear region."""

    point: np.ndarray
    value: float
    gradient: np.ndarray


def piece_gradient(
    ask: Ask, point: np.ndarray, step: float, slope: float, direction: np.ndarray, tol: float
):
    """Forward-difference gradient inside one piece, checked against the piece's exact slope."""
    d = point.shape[0]
    for _ in range(3):
        vals = ask(np.vstack([point, point + step * np.eye(d)]))
        grad = (vals[1:] - vals[0]) / step
        if abs(grad @ direction - slope) <= tol:
            return grad
        step *= 1e-3  # a step crossed another neuron's hyperplane: retry closer
    return None


def same_hyperplane(a: Neuron, b: Neuron, scale: float, loose: bool = False) -> bool:
    """Whether two measured neurons are one hyperplane (loose: to refined precision, which is
    poorer for a neuron of small weight measured among many close hyperplanes)."""
    cosine = float(a.normal @ b.normal)
    angle_tol, offset_tol = (1e-5, 1e-3) if loose else (1e-8, 1e-5)
    return (
        abs(cosine) > 1 - angle_tol
        and abs(a.offset - np.sign(cosine) * b.offset) <= offset_tol * scale
    )


class NeuronSearch:
    """Collects neurons from the kinks of lines; `stages` counts the queries of each step."""

    def __init__(
        self, ask: Ask, oracle, scale: float, rel_tol: float, max_steps: int, stages: dict[str, int]
    ):
        self.ask, self.oracle, self.scale = ask, oracle, scale
        self.rel_tol, self.max_steps, self.stages = rel_tol, max_steps, stages
        self.neurons: list[Neuron] = []
        self.deferred = 0

    def _spend(self, stage: str, before: int) -> None:
        self.stages[stage] = self.stages.get(stage, 0) + self.oracle.queries - before

    def search(self, line: Line) -> int:
        """All kinks on `line` (zooming in on clusters); returns how many neurons were new."""
        new_count, pending = self._scan(line)
        for _ in range(ZOOM_LEVELS):
            closer = []
            for parent, t in pending:
                if ZOOM * parent.span < SHORTEST_ZOOM * self.scale:
                    closer.append((parent, t))
                    continue
                found, still = self._scan(
                    Line(self.ask, parent.point(t)[0], parent.dir, ZOOM * parent.span)
                )
                new_count += found
                closer += still
            pending = closer
        self.deferred += len(pending)
        return new_count

    def _scan(self, line: Line) -> tuple[int, list[tuple[Line, float]]]:
        """The kinks on one segment: adds the neurons not seen before.

        Returns how many were new and the kinks too close to a neighbour to measure here.
        """
        before = self.oracle.queries
        rough, clustered = rough_kinks(line, self.rel_tol, self.max_steps)
        bounds, slopes, jumps, exact = pieces(line, rough)
        self._spend("search", before)
        known_t = self._known_crossings(line)
        widths = np.diff(bounds)
        grads: dict[int, np.ndarray | None] = {}

        def gradient(i):
            if i not in grads:
                before_g = self.oracle.queries
                point = line.point(0.5 * (bounds[i] + bounds[i + 1]))[0]
                tol = 1e-8 * (np.max(np.abs(slopes)) + 1e-300)
                step = 1e-3 * min(widths[i], self.scale)
                grads[i] = piece_gradient(self.ask, point, step, slopes[i], line.dir, tol)
                self._spend("gradients", before_g)
            return grads[i]

        noise_floor = 1e-7 * np.max(np.abs(slopes))
        new_count, pending = 0, []
        for k, t in enumerate(exact):
            if abs(jumps[k]) <= noise_floor:
                continue  # rounding, not a kink (far out, values are large and slopes small)
            # A known hyperplane's predicted crossing is off by its rounding times the distance
            # from the origin, which is large on the short segments around far-out kinks.
            tol_t = 1e-6 * (self.scale + abs(t) + np.linalg.norm(line.x0))
            if known_t.size and np.min(np.abs(known_t - t)) <= tol_t:
                continue
            here = max(float(np.linalg.norm(line.point(t)[0])), self.scale)
            if k in clustered or min(widths[k], widths[k + 1]) < 1e-6 * here:
                pending.append((line, float(t)))  # neighbours too close to measure at this scale
                continue
            left, right = gradient(k), gradient(k + 1)
            if left is None or right is None:
                pending.append((line, float(t)))
                continue
            jump = right - left
            size = np.linalg.norm(jump)
            if size <= 1e-12:
                continue
            normal = jump / size
            crossing = line.point(t)[0]
            candidate = Neuron(
                normal, -float(normal @ crossing), float(np.sign(jumps[k]) * size), crossing
            )
            if any(same_hyperplane(candidate, other, self.scale) for other in self.neurons):
                continue
            self.neurons.append(candidate)
            new_count += 1
        return new_count, pending

    def _known_crossings(self, line: Line) -> np.ndarray:
        if not self.neurons:
            return np.zeros(0)
        normals = np.array([nr.normal for nr in self.neurons])
        offsets = np.array([nr.offset for nr in self.neurons])
        with np.errstate(divide="ignore", invalid="ignore"):  # parallel hyperplanes: never crossed
            return -(normals @ line.x0 + offsets) / (normals @ line.dir)


def refine(
    ask: Ask,
    neurons: list[Neuron],
    others: list[Neuron],
    rng: np.random.Generator,
    scale: float,
    tries: int = 128,
) -> tuple[list[Neuron], list[Sample], int]:
    """Re-measure each neuron's gradient jump far from all other known hyperplanes.

    The first pass had to difference with steps small enough to stay inside pieces it could not
    see; here each step is a fraction of the distance to the nearest other hyperplane (of
    `neurons` and `others`), which makes the rows exact to rounding. A neuron whose jump
    vanishes away from the point it was found at was two kinks seen as one; it is dropped.
    Returns the refined neurons, the two measured samples beside each, and how many were dropped.
    """
    everything = neurons + others
    d = everything[0].normal.shape[0]
    normals = np.array([nr.normal for nr in everything]).T
    offsets = np.array([nr.offset for nr in everything])
    refined, samples, dropped = [], [], 0
    for j, nr in enumerate(neurons):
        # Itself, and rough first-pass copies of its own hyperplane (a neuron of small weight is
        # measured imprecisely the first time, and may be found twice): not obstacles to step past.
        cosines = normals.T @ nr.normal
        twins = (np.abs(cosines) > 1 - 1e-6) & (
            np.abs(offsets - np.sign(cosines) * nr.offset) <= 1e-2 * scale
        )
        twins[j] = True
        best_r, best_x = -1.0, nr.crossing
        for _ in range(tries):
            u = rng.standard_normal(d)
            u -= (u @ nr.normal) * nr.normal
            x = nr.crossing + scale * rng.uniform(0.2, 1.0) * u / np.linalg.norm(u)
            x -= (nr.normal @ x + nr.offset) * nr.normal  # stay on the hyperplane
            dist = np.abs(normals.T @ x + offsets)
            dist[twins] = np.inf
            if dist.min() > best_r:
                best_r, best_x = float(dist.min()), x
        # plus/minus sit r from their hyperplane and best_r - r = r from any other; difference
        # steps h = 0.9 r stay inside that region (longer steps round less).
        r = min(0.5 * best_r, scale)
        n, x, h = nr.normal, best_x, 0.9 * r
        plus, minus = x + r * n, x - r * n
        vals = ask(np.vstack([plus, plus + h * np.eye(d), minus, minus + h * np.eye(d)]))
        grad_plus = (vals[1 : d + 1] - vals[0]) / h
        grad_minus = (vals[d + 2 :] - vals[d + 1]) / h
        jump = grad_plus - grad_minus
        size = np.linalg.norm(jump)
        along = float(jump @ n)
        if (
            size <= 1e-6 * abs(nr.weight)
            or abs(along) < (1 - 1e-6) * size
            or np.sign(along) != np.sign(nr.weight)
        ):
            dropped += 1
            continue
        normal = np.sign(along) * jump / size
        slope_plus, slope_minus = grad_plus @ n, grad_minus @ n
        s_star = (vals[d + 1] - vals[0] + (slope_plus + slope_minus) * r) / (
            slope_plus - slope_minus
        )
        crossing = x + s_star * n
        refined.append(
            Neuron(
                normal,
                -float(normal @ crossing),
                float(np.sign(along) * size),
                crossing,
                reach=best_r,
            )
        )
        samples += [
            Sample(plus, float(vals[0]), grad_plus),
            Sample(minus, float(vals[d + 1]), grad_minus),
        ]
    return refined, samples, dropped
