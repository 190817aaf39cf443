"""Tokens for nearly parallel heads: probe the heads where their shared logit vanishes.

When every W_h is close to a common W_0, the logits s_h = u^T W_h b = a_h . b (a_h = W_h^T u)
share a large common part a_0 . b and differ by only (a_h - a_0) . b, a few per cent of it.
Any token long enough to pull the poles -exp(-s_h) apart then carries a common logit of ten or
more, which saturates every softmax (centring at exp(-common) copies only stretches so far).

The common part is linear in b, so it vanishes on the hyperplane orthogonal to a_0. A key
direction u is therefore read in a *frame*: d - 1 tokens orthogonal to an estimate of a_0
(there the logits are the heads' differences alone, which behave like those of generic heads
and can be scaled up freely), and one short step along a_0 (a common shift of the logits,
which continuation predicts and follows). a_0 is estimated from d one-query probes: with all
logits near m, f - b^T V = sum_h gamma_h sigmoid(s_h) gives logit(F / S) = sum_h (gamma_h / S)
s_h + O(spread^2), a weighted mean of the logits, linear in b. Any vector within the heads'
spread of the a_h serves: the remaining common part is of the size of the differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COMMON_LOGIT = 0.5  # size of the probe logits used to estimate the common row a_0
STEP_LOGIT = 0.5  # common logit shift of the token step along a_0


@dataclass
class Frame:
    """Token frame of one key direction: columns 0..d-2 orthogonal to `row`, last along it.

    plane (d, d-1): orthonormal, orthogonal to row (column 0 is the reference token's direction);
    row: the estimated common row a_0 = W_0^T u (common logit of token b: row . b).
    """

    plane: np.ndarray
    row: np.ndarray

    @property
    def along(self) -> np.ndarray:
        return self.row / np.linalg.norm(self.row)

    @property
    def step(self) -> float:
        """Length of the step along a_0 that shifts every logit by about STEP_LOGIT."""
        return STEP_LOGIT / float(np.linalg.norm(self.row))

    def matrix(self) -> np.ndarray:
        """The full orthonormal frame (d, d): the plane's columns, then the unit row."""
        return np.column_stack([self.plane, self.along])

    def inside(self, x: np.ndarray) -> np.ndarray:
        """x projected onto the plane (orthogonal to the row), normalised."""
        y = self.plane @ (self.plane.T @ x)
        return y / np.linalg.norm(y)

    def complement(self, spanned: list[np.ndarray]) -> np.ndarray:
        """Orthonormal columns inside the plane orthogonal to `spanned` (vectors in the plane)."""
        k = self.plane.shape[1]
        if not spanned:
            return self.plane
        coords = self.plane.T @ np.array(spanned).T  # (d-1, n)
        q = np.linalg.qr(coords, mode="complete")[0]
        return self.plane @ q[:, min(len(spanned), k) :]


def make_frame(
    row: np.ndarray, rng: np.random.Generator, also_small: np.ndarray | None = None
) -> Frame:
    """A frame orthogonal to `row`; its reference column also orthogonal to `also_small` if given.

    `also_small` is the first direction's mean row: a reference token orthogonal to both keeps
    both directions' logits small in the added-token queries that match heads across directions
    (possible when d >= 3).
    """
    d = row.size
    first = [row] + ([also_small] if also_small is not None and d >= 3 else [])
    q = np.linalg.qr(np.column_stack([*first, rng.standard_normal((d, d))]), mode="complete")[0]
    q = q[:, :d]
    # q[:, 0] ~ row; q[:, 1] ~ the part of also_small orthogonal to row (if used); the rest random
    reference = q[:, len(first)] if d > 1 else q[:, 0]
    others = [q[:, j] for j in range(1, d) if j != len(first)]
    plane = np.column_stack([reference, *others]) if d > 1 else np.zeros((d, 0))
    return Frame(plane, row)


def estimate_row(
    ask, u: np.ndarray, V: np.ndarray, C: float, norm: float, affine: bool, basis: np.ndarray
) -> tuple[np.ndarray | None, float]:
    """The common row a_0 of direction u from d (+1 affine) one-query probes [b + u, b].

    Tokens b = norm * basis[:, j]; norm shrinks until every probe's weighted-mean logit
    logit(F / S) is at most a few times COMMON_LOGIT (the expansion above holds for small
    logits). Returns (row or None when no scale works, the norm to start from next time).
    """
    d = u.size
    S = float(u @ V)
    if S == 0:
        return None, norm
    for _ in range(8):
        tokens = [norm * basis[:, j] for j in range(d)] + ([np.zeros(d)] if affine else [])
        answers = ask("common", [np.vstack([b + u, b]) for b in tokens])
        q = (np.asarray(answers) - np.array(tokens) @ V - C) / S
        if np.all((q > 1e-3) & (q < 1 - 1e-3)):
            m = np.log(q / (1 - q))
            if affine:
                m = m[:-1] - m[-1]
            biggest = float(np.max(np.abs(m)))
            if biggest <= 4 * COMMON_LOGIT:
                return basis @ m / norm, norm * min(4.0, COMMON_LOGIT / max(biggest, 1e-12))
            norm *= COMMON_LOGIT / biggest
        else:
            norm /= 4
    return None, norm
