"""Reading one key direction u: anchors (full rational fits), continued tokens (Newton from a
nearby anchor), and the joint fit of the direction's pairs. A mixin of learner.Learner, which
owns the state it uses (oracle ledger, tolerances, token scale, centring)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.multihead.common import Frame
from attnlab.extract.multihead.rational import (
    HeadFit,
    Tolerances,
    fit_with_known_gammas,
    joint_polish,
    layouts,
    newton_from,
    room,
)


def _not_h_heads(heads: int) -> str:
    limit = (
        "; at H = 6 the degree-2H rational fits often fail in float64 even on exact 6-head "
        "targets (19 of 30 random ones raised, benchmarks/results/multihead_heads56.md)"
        if heads >= 6
        else ""
    )
    return (
        f"the target does not behave like {heads} canonical head(s) answering exactly; if it has "
        f"more heads, raise heads / max_heads (noisy or rounded answers are outside this learner's "
        f"assumptions){limit}"
    )


def _unit_off(x: np.ndarray, avoid) -> np.ndarray:
    """x with its components along the vectors in `avoid` removed, normalised."""
    if len(avoid):
        basis = np.linalg.qr(np.array(avoid).T)[0]
        x = x - basis @ (basis.T @ x)
    return x / np.linalg.norm(x)


class DirectionReader:
    """The per-direction half of the learner (see the module docstring)."""

    # State owned (and set) by learner.Learner, declared here for the type checker.
    rng: np.random.Generator
    tol: Tolerances
    method: str
    affine: bool
    anchors: int
    anchor_gap: float
    attempts: int
    b_norm: float
    V: np.ndarray
    anchor_counts: list[int]
    error_bound: float
    last_bound: float  # the error bound of the last direction read by _pairs
    frame: Frame | None  # the current direction's token frame (nearly parallel heads), or None

    if TYPE_CHECKING:  # measurements implemented by learner.Learner

        def measure(
            self,
            pairs: list[tuple[np.ndarray, np.ndarray]],
            points: int,
            stage: str = "pairs",
            exclude=(),
            centers: list[float] | None = None,
        ) -> list[tuple[np.ndarray, np.ndarray, float]]: ...
        def centers_for(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[float]: ...
        def with_shift(self, fit: HeadFit | None, center: float) -> HeadFit | None: ...
        def reject(self, spent: int) -> None: ...
        def random_direction(self, avoid=()) -> np.ndarray: ...
        def token_direction(self, avoid=()) -> np.ndarray: ...
        def augment(self, tokens) -> np.ndarray: ...

    def _continue(
        self, u: np.ndarray, ref: HeadFit, tokens: list[np.ndarray], origin: np.ndarray
    ) -> list[HeadFit | None]:
        """Logits for tokens near the reference token: H answers each, 2H - 1 where Newton is unsafe.

        `origin` is the token ref was read at. In a frame, a step along the common row shifts
        every logit by row . step, which Newton starts from (and continuity is judged against).
        """
        H = ref.gamma.size
        center = float(np.exp(ref.shift))  # continued tokens share their anchor's centre
        centers = [center] * len(tokens)
        # in a frame one answer more than unknowns: an exactly determined Newton system can
        # land on another root when a step moves the logits far (the in-plane logits of nearly
        # parallel heads vary a lot between directions); the spare answer exposes that root
        points = H + int(self.frame is not None and H > 1)
        measured = self.measure([(u, b) for b in tokens], points, centers=centers)
        starts = [
            ref
            if self.frame is None
            else HeadFit(ref.gamma, ref.s + float(self.frame.row @ (b - origin)), 0.0)
            for b in tokens
        ]
        results = [
            self.with_shift(newton_from(start, t, F, S, self.tol), center)
            for start, (t, F, S) in zip(starts, measured)
        ]
        unsafe = [k for k, fit in enumerate(results) if fit is None]
        if unsafe and H > 1:
            count = max(2 * H - 1 - points, 0)
            more = (
                self.measure(
                    [(u, tokens[k]) for k in unsafe],
                    count,
                    exclude=layouts(points),
                    centers=centers[: len(unsafe)],
                )
                if count
                else [(np.zeros(0), np.zeros(0), measured[k][2]) for k in unsafe]
            )
            for k, (t, F, S) in zip(unsafe, more):
                t_all = np.concatenate([measured[k][0], t])
                F_all = np.concatenate([measured[k][1], F])
                results[k] = self.with_shift(
                    fit_with_known_gammas(t_all, F_all, S, ref.gamma, self.tol), center
                )
                if results[k] is None:
                    self.reject(points + count)
        elif unsafe:
            self.reject(len(unsafe) * H)
        return results

    def _pairs(self, u: np.ndarray, ref: HeadFit, B: np.ndarray, needed: int | None = None):
        """Query tokens b (rows), logits u^T W_h b and gammas u^T v_h of direction u, heads in ref's order.

        "interpolation": every token is an anchor: a fresh orthonormal direction with its own
        (2H - 1)-point rational fit, matched to the reference by its gammas.
        "continuation": `self.anchors` anchors fix the gammas (their redundant equations make
        them accurate); the other tokens a + eps e_j stay close to the best-separated anchor a,
        so their logits are close to a's and, the gammas known, H answers and Newton's method
        started at a's logits find them (2H - 1 answers where that is not safe).
        All pairs of the direction are finally refitted together with shared gammas.
        """
        H, d = ref.gamma.size, int(B.shape[1])
        S = float(u @ self.V)
        continuation = self.method == "continuation"
        # affine heads: logits are affine in b, so d + 1 affinely independent tokens are needed
        # (-B[:, 0] completes the orthonormal B)
        needed = (d + 1 if self.affine else d) if needed is None else needed
        frame = self.frame
        if frame is None:
            candidates = [self.b_norm * B[:, j] for j in range(d)] + [-self.b_norm * B[:, 0]]
        else:  # d - 1 tokens in the plane, one short step off it along the common row
            plane = [self.b_norm * frame.plane[:, j] for j in range(d - 1)]
            candidates = [*plane, plane[0] + frame.step * frame.along, -plane[0]]
        in_plane = d if frame is None else d - 1
        # with one head a full fit costs 2H - 1 = H answers: every token is an anchor
        count = min(needed, self.anchors) if continuation and H > 1 else needed
        tokens, fits = self._anchors(u, ref, candidates[:count])
        if continuation and count < needed:
            gamma, logits, _, bound = joint_polish(fits, S)
            while count < needed and (
                bound > self.tol.logit_tol
                or (count < 2 * self.anchors and max(room(row) for row in logits) < self.anchor_gap)
            ):
                # one more anchor when the gammas every continued token relies on are not pinned
                # down yet, or when no anchor's logits are far enough apart for a large step eps
                if count < in_plane:
                    extra = self.b_norm * _unit_off(B[:, count], tokens)
                elif frame is not None and count < len(candidates):
                    extra = candidates[count]  # the plane is full: the token off it is next
                else:
                    extra = self.b_norm * _unit_off(self.token_direction(), ())
                more_tokens, more_fits = self._anchors(u, ref, [tokens[0], extra], avoid=tokens)
                tokens.append(more_tokens[1])
                fits.append(more_fits[1])
                count += 1
                gamma, logits, _, bound = joint_polish(fits, S)
            best = int(np.argmax([room(row) for row in logits]))
            anchor = HeadFit(gamma, logits[best], 0.0, shift=fits[best].shift)
            # the logit shifts are ~ eps * (rms logit ~ 1): keep them well inside the pole gaps
            # and away from saturation
            self.anchor_counts.append(count)
            eps = float(np.clip(0.1 * room(anchor.s), 0.01, 0.1))
            # steps off the anchor that complete the anchors to `needed` independent tokens (for
            # affine heads independent after subtracting the anchor: affinely independent)
            spanned = (
                [b - tokens[best] for k, b in enumerate(tokens) if k != best]
                if self.affine
                else tokens
            )
            if frame is not None:  # steps inside the plane, then one along the common row
                inside = frame.complement(spanned)
                steps = [eps * self.b_norm * inside[:, j] for j in range(inside.shape[1])]
                steps = [*steps, frame.step * frame.along][: needed - count]
            else:
                if spanned:
                    complement = np.linalg.qr(np.array(spanned).T, mode="complete")[0][
                        :, len(spanned) :
                    ]
                else:
                    complement = np.eye(d)
                steps = [
                    eps * self.b_norm * complement[:, j]
                    for j in range(min(complement.shape[1], needed - count))
                ]
            for _ in range(self.attempts):
                if not steps:
                    break
                retry = []
                todo = [tokens[best] + step for step in steps]
                for b, step, fit in zip(todo, steps, self._continue(u, anchor, todo, tokens[best])):
                    if fit is None:
                        retry.append(step / 2)  # same direction, a safer (smaller) step
                    else:
                        tokens.append(b)
                        fits.append(fit)
                steps = retry
            todo = steps
            if todo:
                raise ExtractionError(
                    f"{len(todo)} query tokens gave no usable fit after {self.attempts} redraws: {_not_h_heads(H)}"
                )
        tokens_matrix = np.array(tokens)
        if np.linalg.cond(self.augment(tokens_matrix)) > 1e6:
            raise ExtractionError(
                "the accepted query tokens are nearly dependent; rerun with another seed"
            )
        gamma, logits, residual, bound = joint_polish(fits, S)
        logits = logits - np.array([f.shift for f in fits])[:, None]  # true logits u^T W_h b
        self.error_bound = max(self.error_bound, bound)
        self.last_bound = bound
        if residual > self.tol.fit_tol:
            raise ExtractionError(
                f"the probes of one key direction disagree by {residual:.1e} (relative): {_not_h_heads(H)}"
            )
        # In a frame the first direction's logits at any token are predicted from its columns
        # W_h^T u_1, so a direction must pin its logits down: a polish that stalls above
        # rounding (a head with a tiny gamma along u leaves a flat valley) moves them by up to
        # bound * residual / rounding, not by the bound alone.
        if frame is not None and bound * max(1.0, residual / 1e-16) > 1e3 * self.tol.logit_tol:
            raise ExtractionError(
                f"the logits of one key direction are not pinned down (misfit {residual:.1e}, "
                f"error bound {bound:.1e}): another direction is needed"
            )
        return tokens_matrix, logits, gamma

    def _anchors(self, u: np.ndarray, ref: HeadFit, todo: list[np.ndarray], avoid=()):
        """The reference pair (todo[0]) plus fully interpolated pairs at the other tokens in todo.

        A token that does not work is replaced by a random one orthogonal to the accepted ones."""
        H = ref.gamma.size
        tokens, fits = [todo[0]], [ref]
        todo = todo[1:]
        for attempt in range(self.attempts):
            if not todo:
                return tokens, fits
            retry = []
            # later redraws are shorter: the direction left over may carry large logits. In a
            # frame the logits are the heads' differences, which shrink with the token: redraws
            # there vary the length both ways.
            norm = self.b_norm * (
                0.8 ** (attempt + 1)
                if self.frame is None
                else float(np.exp(self.rng.uniform(-0.7, 0.7)))
            )
            centers = self.centers_for([(u, b) for b in todo])
            measured = self.measure([(u, b) for b in todo], 2 * H - 1, centers=centers)
            for b, center, (t, F, S) in zip(todo, centers, measured):
                fit = self.with_shift(fit_with_known_gammas(t, F, S, ref.gamma, self.tol), center)
                if fit is None:
                    self.reject(2 * H - 1)
                    retry.append(norm * self.token_direction(avoid=list(avoid) + tokens))
                else:
                    tokens.append(b)
                    fits.append(fit)
            todo = retry
        raise ExtractionError(
            f"{len(todo)} query tokens gave no usable fit after {self.attempts} redraws: {_not_h_heads(H)}"
        )
