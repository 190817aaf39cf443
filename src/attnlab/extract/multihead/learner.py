"""The multi-head learner's state machine: probe directions, anchors, continuation, matching.

See attnlab.extract.multihead for the algorithm; the numerics of one probe pair are in
attnlab.extract.multihead.rational, reading one direction in .direction, and turning the d
directions' readings into the heads' parameters (and the final fresh-query check) in .assemble.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from attnlab._random import haar_orthogonal
from attnlab.errors import ExtractionError
from attnlab.extract.multihead.assemble import heads_from_directions, progress_range
from attnlab.extract.multihead.common import Frame, estimate_row, make_frame
from attnlab.extract.multihead.direction import _not_h_heads, _unit_off
from attnlab.extract.multihead.first import CANDIDATES, FirstDirection
from attnlab.extract.multihead.isolated import Isolation, plan, read_direction
from attnlab.extract.multihead.labels import (
    inside_row_spaces,
    match_to_first,
    rank_ok,
    row_bases,
)
from attnlab.extract.multihead.rational import (
    HeadFit,
    Tolerances,
    error_bound,
    fewest_heads_fit,
    fit_heads,
    layouts,
    pair_queries,
    round_center,
    separated,
)
from attnlab.models.canonical import MultiHeadParams
from attnlab.oracle import Oracle

# Directions read in full by a low-rank run: r + SPARE (SPARE - 1 beyond the one that confirms
# the rank) when that is at most d / 4, else r + 2. A direction read in full costs d H queries,
# but their worst error sets the row spaces' and so every later direction's. Measured: with
# 2 spares (and CANDIDATES = 4) 2 of the 3 (128, 4, 16) benchmark targets stayed inexact
# (1.2e-8, 5.5e-8); with 4, all 3 targets each at (64, 4, 8) and (128, 4, 16) reach 1.5e-9 to
# 9.96e-9, at 1.4-1.5x the low-rank free parameters at d = 128. Larger ranks get r / 4 spares:
# the one (384, 4, 32) target measured gave 4.2e-8 with 4 spares (4.7e-8 with 8 candidates
# instead), 5.8e-9 with 8 spares (1.37x).
SPARE = 4


class Learner(FirstDirection):
    """State of one run of `multi_head`: the oracle, what is known so far, and the query ledger."""

    def __init__(
        self,
        oracle: Oracle,
        rng: np.random.Generator,
        heads: int | None,
        max_heads: int,
        method: str,
        affine: bool,
        anchors: int,
        tol: Tolerances,
        progress: bool,
    ):
        self.oracle, self.rng, self.d = oracle, rng, oracle.require_d("multi_head")
        self.method, self.affine, self.anchors, self.tol = method, affine, anchors, tol
        self.attempts = 20  # redraws of one probe before the learner gives up
        self.anchor_gap = (
            0.25  # continued tokens step eps = gap / 10 away from an anchor: errors grow as 1/eps
        )
        self.error_bound = 0.0
        self.last_bound = 0.0
        self.direction_bounds: list[
            float
        ] = []  # error bound of each accepted direction (inf: isolated)
        self.anchor_counts: list[int] = []
        self.heads, self.max_heads = heads, max_heads
        self.stages = {
            "values": 0,
            "pairs": 0,
            "count": 0,
            "matching": 0,
            "rejected": 0,
            "check": 0,
            "common": 0,
        }
        self.progress = progress
        self.b_norm = 1.0
        self.C = 0.0  # the shared constant (affine heads): f of the zero token
        self.logit_scale = 1.0  # target root-mean-square of the logits u^T W_h b
        self.rank: int | None = None  # heads' rank when given (see run)
        self.keep = False  # keep every (sequence, answer) for refine.refine
        self.kept_sequences: list[np.ndarray] = []
        self.kept_answers: list[float] = []
        self.centering = False  # measure each pair around exp(-its mean logit) (see centers_for)
        # nearly parallel heads: read each direction in a frame orthogonal to its common row
        # (module `common`); switched on when the heads' logits differ little against their mean
        self.project = False
        self.frame: Frame | None = None
        self.row_norm = 1.0  # token length for the common-row probes (adapts to the logits)
        self.first_weights: np.ndarray | None = None  # first direction: W_h^T u_1 (columns)
        self.isolate = (
            False  # read later low-rank directions one head at a time (module `isolated`)
        )
        self.isolated = 0  # directions read one head at a time (module `isolated`)
        # low-rank runs at large d: r + spare directions read in full (spare = max(SPARE, r / 4)),
        # each the best of CANDIDATES reference pairs (set in run)
        self.choose = False
        self.spare = SPARE
        self.misread = 0  # directions replaced because their columns broke the heads' rank

    @property
    def known_heads(self) -> int:
        """H, given or found by the first reference pair (everything after that reads it)."""
        assert self.heads is not None, "the number of heads is not known yet"
        return self.heads

    def ask(self, stage: str, sequences: list[np.ndarray]) -> np.ndarray:
        before = self.oracle.queries
        answers = self.oracle.query_many(sequences)
        self.stages[stage] += self.oracle.queries - before
        if self.keep and stage != "check":  # every answer is exact data for the final polish
            self.kept_sequences.extend(sequences)
            self.kept_answers.extend(np.asarray(answers, dtype=np.float64).tolist())
        return answers

    def reject(self, spent: int) -> None:
        """Queries of a probe that was measured and then discarded are reported as rejected."""
        self.stages["pairs"] -= spent
        self.stages["rejected"] += spent

    def random_direction(self, avoid=()) -> np.ndarray:
        """A uniformly random unit vector that keeps the vectors in `avoid` well conditioned.

        Not forced orthogonal to `avoid`: at small d the last of d directions would then be
        pinned near one vector, and a target that is degenerate there would never let it pass.
        A uniform draw is generic; only a draw that would make the accepted set nearly dependent
        (condition number above 1e3, which costs no query to check) is drawn again.
        """
        for _ in range(100):
            x = _unit_off(self.rng.standard_normal(self.d), ())
            if not len(avoid) or np.linalg.cond(np.array([*avoid, x]).T) < 1e3:
                return x
        return _unit_off(self.rng.standard_normal(self.d), avoid)

    def token_direction(self, avoid=()) -> np.ndarray:
        """A random unit token direction: inside the current frame's plane when there is one."""
        x = self.random_direction(avoid)
        if self.frame is None:
            return x
        return self.frame.inside(_unit_off(self.frame.inside(x), avoid) if len(avoid) else x)

    def frame_for(self, u: np.ndarray) -> Frame | None:
        """The token frame of direction u (d + affine one-query probes, stage "common"), or None.

        The probes see the gamma-weighted mean sum_h (gamma_h / S) a_h with S = u^T V: near the
        a_h only while |S| is not small against the gammas. S is known without a query, so
        directions with |S| under half its typical size |V| / sqrt(d) are refused for free.
        """
        if abs(float(u @ self.V)) < 0.5 * float(np.linalg.norm(self.V)) / np.sqrt(self.d):
            return None
        basis = np.linalg.qr(self.rng.standard_normal((self.d, self.d)))[0]
        row, self.row_norm = estimate_row(
            self.ask, u, self.V, self.C, self.row_norm, self.affine, basis
        )
        if row is None or not np.all(np.isfinite(row)) or np.linalg.norm(row) == 0:
            return None
        mean_first = None
        if self.first_weights is not None:  # the first direction's exact mean row
            mean_first = np.mean(self.first_weights[: self.d], axis=1)
        return make_frame(row, self.rng, mean_first)

    @property
    def can_project(self) -> bool:
        return self.d >= 2 and (self.heads is None or self.heads > 1)

    # -- measurements
    def measure(
        self,
        pairs: list[tuple[np.ndarray, np.ndarray]],
        points: int,
        stage: str = "pairs",
        exclude=(),
        centers=None,
    ):
        """(t, F, S) per (u, b) pair, from `points` queries each (ratios other than `exclude`).

        A pair measured around centre t0 (`centers`) gets ratios t0 * t; t is returned, so its
        fit's logits come out shifted by log t0 (HeadFit.shift records it).
        """
        chosen = layouts(points, exclude)
        t = np.array([c / m for c, m in chosen], dtype=np.float64)
        centers = [1.0] * len(pairs) if centers is None else centers
        answers = self.ask(
            stage, [q for (u, b), t0 in zip(pairs, centers) for q in pair_queries(u, b, chosen, t0)]
        )
        answers = answers.reshape(len(pairs), points)
        return [
            (t, answers[k] - b @ self.V - self.C, float(u @ self.V))
            for k, (u, b) in enumerate(pairs)
        ]

    def centers_for(self, pairs) -> list[float]:
        """Centres t0 = exp(-mean logit) of pairs, from one query [b + u, b] each (when centring).

        F = sum_h gamma_h sigmoid(s_h) and S = sum_h gamma_h give sigmoid(s) = F / S exactly when
        all logits are equal, which is the case centring is for (nearly parallel heads).
        """
        if not self.centering:
            return [1.0] * len(pairs)
        measured = self.measure(pairs, 1, centers=[1.0] * len(pairs))
        out = []
        for t, F, S in measured:  # noqa: B007 (the loop counts; its variable is read after or not needed)
            q = float(F[0]) / S if S != 0 else -1.0
            out.append(round_center(-float(np.log(q / (1 - q)))) if 0 < q < 1 else 1.0)
        return out

    def with_shift(self, fit: HeadFit | None, center: float) -> HeadFit | None:
        if fit is not None:
            fit.shift = float(np.log(center))
        return fit

    def fit_reference(
        self, u: np.ndarray, b: np.ndarray, detect: bool
    ) -> tuple[HeadFit | None, int]:
        """Fit the pair (u, b) whose gammas label the heads of direction u (None if unusable), and its cost."""
        points = 2 * self.max_heads + 1 if detect else 2 * self.known_heads - 1
        center = self.centers_for([(u, b)])[0]
        t, F, S = self.measure([(u, b)], points, centers=[center])[0]
        points += int(self.centering)
        if detect:
            return self.with_shift(fewest_heads_fit(t, F, S, self.max_heads), center), points
        fit = fit_heads(t, F, S, self.known_heads)
        return self.with_shift(
            fit if fit is not None and fit.residual <= self.tol.fit_tol else None, center
        ), points

    def usable(self, fit: HeadFit, reference: bool) -> bool:
        """Poles apart and not saturated; for references also gammas that tell the heads apart.

        No gamma has to be a fixed fraction of the largest (a head with a small value vector
        would never pass): what matters is that the fit pins each parameter down, which its
        error bound (rounding-level answers propagated through the Jacobian) measures.
        """
        if np.any(np.abs(fit.s) > self.tol.max_logit) or not separated(fit.s, self.tol.min_gap):
            return False
        if reference and fit.gamma.size:
            size = np.max(np.abs(fit.gamma))
            if np.min(np.abs(fit.gamma)) <= 1e-6 * size:
                return False  # a head (almost) invisible along u: its logits cannot be read
            if fit.t is not None and self.reference_bound(fit) > 1e3 * self.tol.logit_tol:
                return False
            return bool(separated(fit.gamma, 1e-4 * size))
        return True

    def _count_heads(self) -> int:
        """Canonical heads seen by one more random probe pair (2 H0 + 1 queries, stage "count")."""
        u, b = self.random_direction(), self.b_norm * self.random_direction()
        t, F, S = self.measure([(u, b)], 2 * self.max_heads + 1, stage="count")[0]
        fit = fewest_heads_fit(t, F, S, self.max_heads)
        return self.max_heads if fit is None else fit.gamma.size

    def token_basis(self, B: np.ndarray) -> np.ndarray:
        """The tokens' basis for the current direction: its frame if it has one, else B."""
        return B if self.frame is None else self.frame.matrix()

    def augment(self, tokens) -> np.ndarray:
        """Token rows, with a column of ones for affine heads (whose logits are affine in b)."""
        tokens = np.asarray(tokens)
        return np.hstack([tokens, np.ones((tokens.shape[0], 1))]) if self.affine else tokens

    # -- the whole run
    def run(self) -> tuple[MultiHeadParams, dict]:
        d = self.d
        eye = np.eye(d)
        if self.affine:  # one token x answers x^T V + C: the zero token gives C
            answers = self.ask("values", [np.zeros((1, d))] + [eye[i][None] for i in range(d)])
            self.C, self.V = float(answers[0]), answers[1:] - answers[0]
        else:
            self.V = self.ask("values", [eye[i][None] for i in range(d)])
        U, B = haar_orthogonal(self.rng, d), haar_orthogonal(self.rng, d)
        if self.rank is not None:  # only where the directions read in full are a small part of d
            self.spare = max(SPARE, (self.rank + int(self.affine)) // 4)
            self.choose = 4 * (self.rank + int(self.affine) + self.spare) <= d + int(self.affine)
        found = self._first_direction(U, B)
        if found is None:  # no canonical heads: the zero map (plus the constant)
            return MultiHeadParams(np.zeros((0, d, d)), np.zeros((0, d)), c=self.C), {
                "b_norm": self.b_norm
            }
        first_direction, first_u = found
        H = self.known_heads
        directions: list[np.ndarray] = []
        gammas: list[np.ndarray] = []
        weights: list[np.ndarray] = []
        tokens, logits, gamma = first_direction
        first = HeadFit(gamma, logits[0], 0.0)  # the polished reference: heads are labelled by it
        # every head's W_h^T u_1: the first direction's logits at any token (matching in frames)
        self.first_weights = np.linalg.solve(self.augment(tokens), logits)
        width = (
            d + 1 if self.affine else d
        )  # unknowns per head and direction: W_h^T u (and u^T u_h)
        # heads of rank r: W_h^T u lies in an r-dimensional row space (r + 1 with the key bias).
        # r + 2 directions read in full span it (one spare confirms the rank); every later
        # direction then needs only r + 2 tokens, solved inside the row spaces.
        low = None if self.rank is None else self.rank + int(self.affine)
        # the two extra spares only while the directions read in full stay a small part of d
        # (at d = 12 they would cost 20% more queries; the errors they cure appeared at d >= 64)
        spare = self.spare if self.choose else 2
        full = d if low is None or low + spare >= width else low + spare
        later_tokens = None if low is None else low + 2  # tokens per direction after the first full
        bases = None
        isolation: Isolation | None = None
        column = 0  # the next column of U to try as a key direction
        bar = progress_range(d, "multi-head directions", self.progress)
        ticks = iter(bar)
        costs: list[int] = []  # queries spent on each accepted direction
        while len(directions) < d:
            next(ticks, None)
            spent_here = self.stages["pairs"]
            if column == 0:
                u, order = first_u, np.arange(H)
            else:
                candidate = U[:, column] if column < d else self.random_direction()
                candidate = _unit_off(candidate, directions)
            column += 1
            if column > 1 and isolation is not None:
                spent = self.stages["pairs"]
                read = read_direction(self.ask, candidate, self.V, isolation, self.tol.max_logit)
                if read is not None:
                    directions.append(candidate)
                    self.direction_bounds.append(0.0)
                    gammas.append(read[0])
                    weights.append(read[1])
                    self.isolated += 1
                    costs.append(self.stages["pairs"] - spent_here)
                    continue
                self.reject(self.stages["pairs"] - spent)
            reading_full = len(directions) < full
            if column > 1:
                u, order, (tokens, logits, gamma), columns = self._accepted_direction(
                    candidate, first, first_u, B, directions, bases, reading_full, later_tokens
                )
            else:
                columns = np.linalg.solve(self.augment(tokens), logits[:, order])
            directions.append(u)
            self.direction_bounds.append(self.last_bound)
            gammas.append(gamma[order])
            weights.append(columns)
            costs.append(self.stages["pairs"] - spent_here)
            if len(directions) == full and full < d:
                assert low is not None  # full < d only when a rank was given
                bad = self._misread_full_direction(np.array(weights), low)
                if bad is not None:  # one direction's columns leave the others' row spaces
                    self.reject(costs[bad])
                    for kept in (directions, gammas, weights, self.direction_bounds, costs):
                        del kept[bad]
                    self.misread += 1
                    continue  # one more direction read in full replaces it
                bases = row_bases(
                    np.array(weights), low, self.affine, np.array(self.direction_bounds)
                )
                if self.isolate and not self.affine and not self.project:
                    # query tokens that only one head sees (module `isolated`)
                    isolation = plan(bases, np.array(weights))
        return heads_from_directions(directions, gammas, weights, self.affine, self.C), {
            "b_norm": self.b_norm,
            "frames": self.project,
            "anchors": self.anchor_counts,
            "logit_error_bound": self.error_bound,
            "isolated_directions": self.isolated,
            "misread_directions": self.misread,
        }

    def _accepted_direction(
        self, u, first, first_u, B, accepted, bases, reading_full: bool, later_tokens
    ):
        """A direction read (in full, or at `later_tokens` tokens inside the row spaces) and its
        columns W_h^T u in the first direction's order of heads.

        A later direction whose logits leave the row spaces was misread (a continued token's
        Newton iteration can settle on another root, which no misfit shows with H answers for
        H logits): it is replaced by a fresh direction, a few times, before the heads' rank is
        blamed (the error then says so).
        """
        attempts = 1 if reading_full else 4
        if reading_full and self.choose and self.frame is None and not self.project:
            u = self._best_conditioned(u, B[:, 0], accepted)
        for attempt in range(attempts):
            spent = self.stages["pairs"]
            u, order, read = self._direction(
                u, first, first_u, B, accepted, needed=None if reading_full else later_tokens
            )
            tokens, logits, _ = read
            if reading_full:
                return u, order, read, np.linalg.solve(self.augment(tokens), logits[:, order])
            try:
                columns = inside_row_spaces(
                    self.augment(tokens), logits[:, order], bases, self.affine
                )
            except ExtractionError:
                if attempt == attempts - 1:
                    raise
                self.reject(self.stages["pairs"] - spent)
                self.misread += 1
                u = self.random_direction(avoid=accepted)
                continue
            return u, order, read, columns
        raise AssertionError("unreachable")

    def reference_bound(self, fit: HeadFit) -> float:
        """How far rounding-level answers can move a reference pair's fitted gammas and logits."""
        assert fit.t is not None and fit.F is not None  # fits from data keep it
        sig = expit(fit.s[None, :] + np.log(fit.t)[:, None])
        jac = np.hstack([sig, sig * (1 - sig) * fit.gamma[None, :]])
        return error_bound(jac, max(float(np.max(np.abs(fit.F))), float(np.max(np.abs(fit.gamma)))))

    def _best_conditioned(self, u, token, accepted, candidates: int = CANDIDATES) -> np.ndarray:
        """Of u and a few random directions, the one whose reference pair pins its logits best.

        A low-rank run reads only r + 2 directions in full, and their worst error sets the row
        spaces' (every later direction relies on them): a reference pair costs 2H - 1 queries
        against d H for a direction, so choosing among a few is cheap. The pairs measured here
        are discarded (stage "rejected"); the chosen direction is measured again when read.
        """
        best, best_bound = u, np.inf
        for k in range(candidates):
            candidate = u if k == 0 else self.random_direction(avoid=accepted)
            fit, spent = self.fit_reference(candidate, self.b_norm * token, detect=False)
            self.reject(spent)
            if fit is None or not self.usable(fit, reference=True):
                continue
            bound = self.reference_bound(fit)
            if bound < best_bound:
                best, best_bound = candidate, bound
        return best

    def _misread_full_direction(self, weights: np.ndarray, low: int) -> int | None:
        """The one direction read in full whose columns alone break rank `low`, else None.

        Columns of r + 2 directions must span only r dimensions per head. If they span more,
        either a head's rank is above r (row_bases then raises) or one direction was misread:
        then leaving it out restores the rank, and another direction is read in its place
        (at most a few times per run).
        """
        if self.misread >= 3 or all(
            rank_ok(weights[:, :, h], low) for h in range(weights.shape[2])
        ):
            return None
        for k in range(weights.shape[0]):
            rest = np.delete(weights, k, axis=0)
            if all(rank_ok(rest[:, :, h], low) for h in range(weights.shape[2])):
                return k
        return None

    def _direction(self, u, first: HeadFit, first_u, B, accepted, attempts: int = 20, needed=None):
        """Direction u read in full, its heads matched to the first direction's.

        Matching comes last, on the polished gammas and logits at the shared token B[:, 0]: the
        predictions of the added-token queries are then accurate enough to single out one order.
        A direction that does not work is replaced by a random one mostly orthogonal to those
        `accepted`.
        """
        b = self.b_norm * B[:, 0]
        for _ in range(attempts):
            spent_before = self.stages["pairs"]
            basis, first_here = B, first
            if self.project:  # a frame per direction; first's logits there from W_h^T u_1
                self.frame = self.frame_for(u)
                if self.frame is None:
                    u = self.random_direction(avoid=accepted)
                    continue
                basis = self.frame.matrix()
                b = self.b_norm * basis[:, 0]
                assert self.first_weights is not None  # set once the first direction is read
                first_here = HeadFit(
                    first.gamma, self.augment(b[None])[0] @ self.first_weights, 0.0
                )
            fit, spent = self.fit_reference(u, b, detect=False)
            if fit is not None and self.usable(fit, reference=True):
                try:
                    pairs = self._pairs(u, fit, basis, needed)
                except ExtractionError:
                    pairs = None  # this direction's tokens did not all fit: another direction will
                if pairs is not None:
                    order = match_to_first(
                        self.ask,
                        lambda x: x @ self.V + self.C,
                        first_here,
                        first_u,
                        HeadFit(pairs[2], pairs[1][0], 0.0),
                        u,
                        b,
                    )
                    if order is not None:
                        return u, order, pairs
            self.reject(self.stages["pairs"] - spent_before)
            u = self.random_direction(avoid=accepted)
        raise ExtractionError(
            f"no usable probe direction after {attempts} tries: {_not_h_heads(self.known_heads)}"
        )
