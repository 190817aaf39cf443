"""The first key direction: the number of heads (if unknown), the token length, the frames.

A mixin of learner.Learner (which owns the state it uses). The first direction is read, its
exact columns W_h^T u_1 say how long the tokens should be (logits of about logit_scale) and
whether the heads are nearly parallel (then every direction is read in a frame, module
`common`); it is read again until the length settles.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from attnlab.errors import ExtractionError
from attnlab.extract.multihead.common import Frame
from attnlab.extract.multihead.direction import DirectionReader
from attnlab.extract.multihead.rational import HeadFit

# Reference pairs a low-rank run compares before reading a direction in full (the first one too):
# on the 3 (128, 4, 16) targets of the benchmark, 4 took the error from 2.3e-8 / 2.1e-7 / 8.2e-9
# to 5.2e-9 / 1.2e-8 / 5.5e-8 with 2 spare directions (the spares, learner.SPARE, did the rest).
CANDIDATES = 4

# Heads count as nearly parallel when the spread of their columns W_h^T u about the mean is below
# this fraction of the columns' size: generic heads give ~0.7 (independent columns), the
# 5%-perturbed family ~0.05; read from exact columns, not from logits of a few nearby tokens.
PARALLEL = 0.2


class FirstDirection(DirectionReader):
    """The first direction's probes (see the module docstring)."""

    # State owned (and set) by learner.Learner, declared here for the type checker.
    d: int
    heads: int | None
    max_heads: int
    stages: dict[str, int]
    project: bool
    centering: bool
    logit_scale: float
    frame: Frame | None
    choose: bool  # compare CANDIDATES first pairs (low-rank runs at large d)

    if TYPE_CHECKING:  # implemented by learner.Learner

        @property
        def known_heads(self) -> int: ...
        @property
        def can_project(self) -> bool: ...
        def frame_for(self, u: np.ndarray) -> Frame | None: ...
        def fit_reference(
            self, u: np.ndarray, b: np.ndarray, detect: bool
        ) -> tuple[HeadFit | None, int]: ...
        def usable(self, fit: HeadFit, reference: bool) -> bool: ...
        def _count_heads(self) -> int: ...
        def reference_bound(self, fit: HeadFit) -> float: ...
        def token_basis(self, B: np.ndarray) -> np.ndarray: ...

    def _first_direction(self, U: np.ndarray, B: np.ndarray):
        """(tokens, logits, gammas) of the first direction and its u; None if there are no heads."""
        d = self.d
        # attempts at the first direction, each with the token length learned so far (two more
        # once the frames are switched on: their token length is learned afresh)
        attempt, last = -1, 3
        while attempt < last:
            attempt += 1
            spent_before, framed = self.stages["pairs"], self.project
            first, first_u = self._first_reference(
                U[:, 0] if attempt == 0 else self.random_direction(), B[:, 0]
            )
            if self.project and not framed:  # switched on by failed first probes
                last += 2
            H = self.known_heads
            if H == 0:
                return None
            try:
                first_direction = self._pairs(first_u, first, self.token_basis(B))
            except ExtractionError:
                if attempt == last:
                    raise
                self.reject(self.stages["pairs"] - spent_before)  # another first direction
                s = first.s - first.shift  # its true logits (without the centre's shift)
                logit_spread = float(np.std(s))
                crowded = logit_spread < PARALLEL * float(np.sqrt(np.mean(s**2)))
                if not self.project and self.can_project and H > 1 and crowded:
                    # its tokens did not all fit and the reference pair's logits crowd about
                    # their mean: nearly parallel heads, whose columns could not be read here
                    self.project, last = True, last + 2
                    self.b_norm *= min(self.logit_scale / max(logit_spread, 1e-12), 100.0)
                continue
            # d*H logits estimate the scale far better than the H of the first pair alone
            logits = first_direction[1]
            rms = float(np.sqrt(np.mean(logits**2)))
            spread = float(np.sqrt(np.mean(np.var(logits, axis=1)))) if H > 1 else rms
            common = float(np.max(np.abs(np.mean(logits, axis=1))))
            # The tokens of one direction are mostly small steps off an anchor, so their logits
            # sample few token directions; the columns W_h^T u (exact now) give the size of the
            # logits of any token of length b_norm, and of the heads' differences.
            columns = np.linalg.solve(self.augment(first_direction[0]), logits)[:d]
            if attempt == last:
                break
            differences = columns - np.mean(columns, axis=1, keepdims=True)
            parallel = float(np.sqrt(np.mean(differences**2) / max(np.mean(columns**2), 1e-300)))
            if not self.project and self.can_project and H > 1 and parallel < PARALLEL:
                # nearly parallel heads: their logits share a large common part and differ
                # little, so the poles crowd together. Read every direction in a frame orthogonal
                # to its common row (module `common`), with tokens long enough that the heads'
                # differences, all that is left there, have about the usual size.
                self.project, last = True, last + 2
                spread = self.b_norm * float(np.sqrt(np.mean(differences**2)))
                self.b_norm *= min(self.logit_scale / max(spread, 1e-12), 100.0)
                self.reject(self.stages["pairs"] - spent_before)
                continue
            if self.frame is not None:  # logits of tokens in the plane (orthogonal to the row)
                inside = self.frame.plane.T @ columns
                rms = self.b_norm * float(np.sqrt(np.mean(inside**2)))
            else:
                # a random token of length b_norm has logits of rms b_norm |W_h^T u| / sqrt(d):
                # the later directions' tokens are such tokens, and when the sampled ones (steps
                # about one anchor) happen to be much smaller, the later directions saturate (at
                # W entries ~10, d = 16: logits 3-31 at every later direction, "no usable probe
                # direction"); the larger of the two estimates decides
                rms = max(rms, self.b_norm * float(np.sqrt(np.mean(columns**2))))
            if (
                self.frame is None
                and not self.can_project
                and (self.centering or spread < 0.3 * rms)
            ):
                # (one head, or d = 1) longer tokens spread the poles; centring each pair's
                # ratios at exp(-mean logit) keeps the common part from saturating the softmax.
                factor = min(0.7 / max(spread, 1e-12), 5.0 / max(common, 1e-12))
                if self.centering and 0.6 <= factor <= 1.6:
                    break
                self.centering = True
                self.b_norm *= factor
            elif 0.5 * self.logit_scale <= rms <= 1.4 * self.logit_scale:
                break
            else:
                self.b_norm *= self.logit_scale / rms
            self.reject(self.stages["pairs"] - spent_before)
        return first_direction, first_u

    def _first_reference(self, u: np.ndarray, b: np.ndarray, attempts: int = 40):
        """The reference pair of the first direction; fixes H (if unknown) and the scale of b.

        b is rescaled until the logits u^T W_h b have root-mean-square about 1: then the poles
        -exp(-logit) are apart and no softmax saturates over the ratios t in [1/(H+1), H+1].
        """
        detect = self.heads is None
        # low-rank runs read few directions in full, and the first one's errors reach every row
        # space: of a few usable first pairs, the best conditioned is kept (the others rejected)
        pool: list[tuple[float, HeadFit, np.ndarray, int]] = []
        wanted = CANDIDATES if self.choose else 1
        # after repeated failures the token length is changed blindly. Low-rank runs at large d
        # try longer tokens first and keep frames (meant for nearly parallel heads) for later:
        # unit tokens there see logits of about ||W_h||_F / d, which crowd the poles (measured at
        # (384, 4, 32): frames switched on after 6 failures at lengths 1 and 3 cost 3.3x the free
        # parameters). Small d keeps the order under which the near-parallel family never fails.
        # Past 1e-2..1e2 the lengths go on geometrically both ways (W of entries ~100 needs tokens
        # ~1e-2 and shorter, W ~1e-6 tokens ~1e3: before, those raised here)
        further = [3e-3, 300.0, 1e-3, 1e3, 3e-4, 3e3, 1e-4, 1e4]
        if self.choose:
            fallback_scales = iter([3.0, 10.0, 30.0, 1 / 3, 0.1, 100.0, 1 / 30, 0.01, *further])
            frames_after = 12
        else:
            fallback_scales = iter([3.0, 10.0, 1 / 3, 30.0, 0.1, 1 / 30, 0.01, 100.0, *further])
            frames_after = 6
        failures, off_scale = 0, []
        for _ in range(attempts):
            token = self.b_norm * b
            self.frame = None
            if self.project:
                self.frame = self.frame_for(u)
                if self.frame is None:  # no common row along u (u^T V = 0, or saturated)
                    u = self.random_direction()
                    continue
                token = self.b_norm * self.frame.plane[:, 0]
            fit, spent = self.fit_reference(u, token, detect)
            if fit is None:
                self.reject(spent)
                failures += 1
                if failures % 3 == 0:  # repeated failure: more likely a bad scale than bad luck
                    # (or crowded poles: nearly parallel heads need long tokens and centring, or
                    # better, after more failures, tokens orthogonal to their common row)
                    self.centering = True
                    if failures >= frames_after and self.can_project:
                        self.project = True
                    self.b_norm = next(fallback_scales, self.b_norm)
                u = self.random_direction()
                continue
            if detect:
                if fit.gamma.size < self.max_heads and self._count_heads() > fit.gamma.size:
                    # heads can hide in one pair (two nearly equal logits, a gamma near 0), hardly in two
                    self.reject(spent)
                    u = self.random_direction()
                    continue
                self.heads = fit.gamma.size
            if self.heads == 0:
                return fit, u
            rms = float(np.sqrt(np.mean(fit.s**2)))
            if not 0.25 <= rms <= 4.0:
                # one pair holds only H logits: rescale b only once three pairs agree it is off
                off_scale.append(max(rms, 1e-3))
                if len(off_scale) == 3:
                    self.b_norm /= float(np.median(off_scale))
                    off_scale.clear()
                self.reject(spent)
                detect = False  # the count found stands; only the probe changes
                u = self.random_direction()
                continue
            if self.usable(fit, reference=True):
                if wanted == 1 or self.project:
                    return fit, u
                pool.append((self.reference_bound(fit), fit, u, spent))
                detect = False  # the count found stands
                if len(pool) == wanted:
                    break
            else:
                self.reject(spent)
            u = self.random_direction()
        if pool:
            best = min(range(len(pool)), key=lambda k: pool[k][0])
            for k, (_, _, _, spent) in enumerate(pool):
                if k != best:
                    self.reject(spent)
            return pool[best][1], pool[best][2]
        raise ExtractionError(
            f"could not find a well-conditioned first probe pair with "
            f"{self.heads if self.heads is not None else 'up to ' + str(self.max_heads)} head(s): the target "
            f"may have more canonical heads than assumed (raise heads / max_heads), or is not a "
            f"multi-head regressor with exact answers"
            + (
                "; at H = 6 the degree-2H rational fits often fail in float64 even on exact "
                "6-head targets (19 of 30 random ones raised, benchmarks/results/multihead_heads56.md)"
                if self.max_heads >= 6
                else ""
            )
        )
