"""Two jobs of the learner that need no learner state: labelling heads across key directions
(added-token queries) and solving low-rank heads inside their row spaces."""

from __future__ import annotations

import itertools

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.multihead.rational import HeadFit


def match_to_first(
    ask, offset, first: HeadFit, u1: np.ndarray, fit: HeadFit, ui: np.ndarray, b: np.ndarray
) -> np.ndarray | None:
    """order with fit's head order[h] = first's head h, from added-token queries [b+u1, b+ui, b].

    `ask(stage, sequences)` answers queries; `offset(b)` is b^T V + C, the part every answer shares.

    Each query's answer is predicted under every order of heads; an order is accepted once it
    predicts every answer so far (to 1e-7, relative) and every other order misses some answer
    by a thousand times more than it does. So the decision adapts to how different the orders'
    predictions are (heads with small values differ little) instead of a fixed window.
    """
    H = first.gamma.size
    if H == 1:
        return np.zeros(1, dtype=int)
    perms = [np.array(p) for p in itertools.permutations(range(H))]
    lam1, lami = np.exp(first.s), np.exp(fit.s)
    worst = np.zeros(len(perms))
    for p, q, m in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (3, 1, 1), (1, 3, 1)]:
        seq = np.vstack(
            [
                np.repeat((b + u1)[None], p, 0),
                np.repeat((b + ui)[None], q, 0),
                np.repeat(b[None], m, 0),
            ]
        )
        F = ask("matching", [seq])[0] - offset(b)
        scale = max(abs(F), np.max(np.abs(first.gamma)), np.max(np.abs(fit.gamma)))
        for k, perm in enumerate(perms):
            num = p * lam1 * first.gamma + q * lami[perm] * fit.gamma[perm]
            pred = float(np.sum(num / (p * lam1 + q * lami[perm] + m)))
            worst[k] = max(worst[k], abs(pred - F) / scale)
        ranked = np.argsort(worst)
        best, runner_up = worst[ranked[0]], worst[ranked[1]]
        if best > 1e-6:
            return None  # no order explains the answers: the fits of this direction are off
        if best <= 1e-7 and runner_up >= 1e3 * max(best, 1e-14):
            return perms[ranked[0]]
    return None


def rank_ok(columns: np.ndarray, rank: int) -> bool:
    """The columns (directions, width) span at most `rank` dimensions, to 1e-7 of the largest."""
    sing = np.linalg.svd(columns, compute_uv=False)
    return not (sing.size > rank and sing[rank] > 1e-7 * sing[0])


def row_bases(
    weights: np.ndarray, rank: int, affine: bool, bounds: np.ndarray | None = None
) -> list[np.ndarray]:
    """Orthonormal bases (width, rank) of each head's row space, from directions read in full.

    The singular values beyond `rank` must vanish (to 1e-7 of the largest): otherwise the
    head has a larger rank than `rank` and the target is outside the model asked for.
    `bounds` (one per direction: its logits' error bound) weight the directions by 1 / bound:
    every exact column lies in the row space, so any positive weights give the same space, and
    a badly read direction then moves it little.
    """
    scale = _reliability(weights.shape[0], bounds)
    bases = []
    for h in range(weights.shape[2]):
        if not rank_ok(weights[:, :, h], rank):
            sing = np.linalg.svd(weights[:, :, h], compute_uv=False)
            raise ExtractionError(
                f"head {h} has rank above {rank - int(affine)} (singular values "
                f"{sing[rank - 1]:.2e}, {sing[rank]:.2e} at the cut): give a larger rank, or rank=None"
            )
        vt = np.linalg.svd(scale[:, None] * weights[:, :, h], full_matrices=False)[2]
        bases.append(vt[:rank].T)
    return bases


def _reliability(n: int, bounds: np.ndarray | None) -> np.ndarray:
    """Weights floor / bound (at most 1) of n directions read in full; all 1 without bounds."""
    if bounds is None:
        return np.ones(n)
    floor = max(float(np.min(bounds)), 1e-300)
    return floor / np.maximum(np.asarray(bounds, dtype=np.float64), floor)


def inside_row_spaces(tokens: np.ndarray, logits: np.ndarray, bases, affine: bool) -> np.ndarray:
    """W_h^T u (columns) from logits at fewer tokens than unknowns, W_h^T u = basis_h c_h."""
    out = np.empty((bases[0].shape[0], logits.shape[1]))
    for h, basis in enumerate(bases):
        system = tokens @ basis
        c = np.linalg.lstsq(system, logits[:, h], rcond=None)[0]
        misfit = float(np.max(np.abs(system @ c - logits[:, h])))
        if misfit > 1e-7 * max(1.0, float(np.max(np.abs(logits)))):
            raise ExtractionError(
                f"head {h}'s logits leave its row space (misfit {misfit:.1e}): its rank is above "
                f"{basis.shape[1] - int(affine)}; give a larger rank, or rank=None"
            )
        out[:, h] = basis @ c
    return out
