"""Learning multi-head attention from value queries, up to its canonical form.

`multi_head` needs no structural assumption. For a key direction u and a query token b, the
sequence of c copies of a = b + u followed by m copies of b answers

    f - b^T V = sum_h gamma_h * t lam_h / (1 + t lam_h),    t = c / m,

with V = sum_h v_h (read from d one-token queries), gamma_h = u^T v_h and lam_h = exp(u^T W_h b).
Divided by t this is a rational function of t with one pole per canonical head at -1/lam_h and
residue gamma_h, whose residues sum to u^T V (known). So 2H - 1 ratios t (sequences of length
<= H + 2) fix the H pairs (gamma_h, u^T W_h b): a linearised rational fit, polished by Gauss-Newton.

d directions u times d tokens b give u_i^T W_h b_j for every head, hence W_h, and the gammas give
v_h. Reading every pair that way ("interpolation") costs about (2H - 1) d^2 + 2d queries. But
gamma_h depends on u only: once a direction's gammas are known (from two or more "anchor" pairs,
whose redundancy makes them accurate), each further token needs only its H logits. Tokens
a + eps e_j close to an anchor a have logits close to a's, so H answers and Newton's method started
at a's logits find them, and the heads keep their labels ("continuation", the default): about
H (d^2 + d) + (H - 1) d * anchors + d queries, against 4 H d^2 - 2H + 1 for the published algorithm
(arXiv 2608.03294) and H (d^2 + d) free parameters. Pairs whose numbers are not trustworthy (poles
too close, a logit saturated, Newton not provably on the right root) are re-measured or redrawn.

Heads are labelled consistently across the tokens of one direction by their gammas, and across
directions by one or two "added-token" queries (a sequence holding both b + u_1 and b + u_i, whose
answer exactly one matching of heads predicts).

`orthogonal_heads` is the structured case of Prop. 7.1: heads in pairwise orthogonal subspaces
with known bases are learned one at a time by the single-head algorithm run inside each subspace.
"""

from __future__ import annotations

import itertools
import sys
import time
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import expit
from scipy.stats import ortho_group
from tqdm import tqdm

from attnlab.errors import ExtractionError
from attnlab.extract.result import Extraction, measure_fidelity, random_sequences
from attnlab.multihead import MultiHeadParams, canonical_order
from attnlab.oracle import Oracle

MAX_HEADS = 6  # beyond this the degree-2H rational fits lose too many digits in float64
METHODS = ("continuation", "interpolation")
DETECT_TOL = 1e-12  # a count of heads must explain the first probe pair to this (relative) residual
SATURATION = 3.0  # continuation prefers anchors whose logits stay below this in size


def published_query_bound(heads: int, d: int) -> int:
    """Queries used by the canonical learner of arXiv 2608.03294: 4 H d^2 - 2 H + 1."""
    return 4 * heads * d * d - 2 * heads + 1


def canonical_dof(heads: int, d: int) -> int:
    """Free parameters of a canonical form with H heads: H (d^2 + d)."""
    return heads * (d * d + d)


# -- one (u, b) pair: a rational fit ------------------------------------------------------------
def _layouts(points: int, exclude=()) -> list[tuple[int, int]]:
    """(copies of b + u, copies of b) for `points` ratios t = c/m, symmetric in log t around 1.

    Taken in the order t = 1, 1/2, 2, 1/3, 3, ... (t = 1 left out for an even count, to keep the
    symmetry), skipping the layouts in `exclude` (a pair's ratios already measured).
    """
    order = [(1, 1)] + [layout for k in range(2, points + len(exclude) + 3) for layout in ((1, k), (k, 1))]
    if points % 2 == 0 and not exclude:
        order = order[1:]
    chosen = [layout for layout in order if layout not in set(exclude)][:points]
    return sorted(chosen, key=lambda cm: cm[0] / cm[1])


def _pair_queries(u: np.ndarray, b: np.ndarray, layouts) -> list[np.ndarray]:
    key = b + u
    return [np.vstack([np.repeat(key[None], c, 0), np.repeat(b[None], m, 0)]) for c, m in layouts]


@dataclass
class _HeadFit:
    gamma: np.ndarray  # u^T v_h, one per head
    s: np.ndarray  # u^T W_h b, one per head
    residual: float  # largest misfit over the data, relative to the data's scale
    t: np.ndarray | None = None  # the data it was fitted to
    F: np.ndarray | None = None

    def model(self, t: np.ndarray) -> np.ndarray:
        return expit(self.s[None, :] + np.log(t)[:, None]) @ self.gamma


def _polish(gamma, s, t, F, S, iterations: int = 30):
    """Gauss-Newton on F_k = sum_h gamma_h sigmoid(s_h + log t_k) and sum_h gamma_h = S."""
    log_t = np.log(t)
    for _ in range(iterations):
        sig = expit(s[None, :] + log_t[:, None])
        residual = np.concatenate([sig @ gamma - F, [gamma.sum() - S]])
        jac = np.vstack([np.hstack([sig, sig * (1 - sig) * gamma[None, :]]),
                         np.concatenate([np.ones_like(gamma), np.zeros_like(s)])])
        step = np.linalg.lstsq(jac, -residual, rcond=None)[0]
        gamma, s = gamma + step[:gamma.size], s + step[gamma.size:]
        if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(np.concatenate([gamma, s])))):
            break
    return gamma, s


def _fit_heads(t: np.ndarray, F: np.ndarray, S: float, n: int) -> _HeadFit | None:
    """The n-head fit of F(t) = sum_h gamma_h t lam_h / (1 + t lam_h) with sum gamma_h = S, or None.

    F(t)/t = P(t)/Q(t) with Q monic of degree n (roots -1/lam_h) and P of degree n-1 whose
    leading coefficient is S: a linear least-squares problem in the other 2n - 1 coefficients.
    """
    scale = max(float(np.max(np.abs(F))), abs(S))
    if n == 0:
        return _HeadFit(np.zeros(0), np.zeros(0), 0.0 if scale == 0 else 1.0)
    if scale == 0:
        return None
    R = F / t
    powers = t[:, None] ** np.arange(n)[None, :]
    A = np.hstack([powers[:, :n - 1], -R[:, None] * powers])
    rhs = R * t ** n - S * t ** (n - 1)
    coef = np.linalg.lstsq(A, rhs, rcond=None)[0]
    p = np.concatenate([coef[:n - 1], [S]])  # ascending powers
    q = np.concatenate([coef[n - 1:], [1.0]])
    roots = np.roots(q[::-1])
    if np.any(np.abs(roots.imag) > 1e-6 * np.maximum(1.0, np.abs(roots.real))) or np.any(roots.real >= 0):
        return None
    roots = roots.real
    mu = -roots
    dq = np.polynomial.polynomial.polyder(q)
    gamma = np.polynomial.polynomial.polyval(roots, p) / np.polynomial.polynomial.polyval(roots, dq)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        s = -np.log(mu)
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(s))):
        return None
    gamma, s = _polish(gamma, s, t, F, S)
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(s))):
        return None
    fit = _HeadFit(gamma, s, 0.0, t, F)
    fit.residual = max(float(np.max(np.abs(fit.model(t) - F))), abs(gamma.sum() - S)) / scale
    return fit


def _fewest_heads_fit(t: np.ndarray, F: np.ndarray, S: float, max_heads: int) -> _HeadFit | None:
    """The fit with the fewest heads (<= max_heads) that explains the answers, or None."""
    for n in range(max_heads + 1):
        fit = _fit_heads(t, F, S, n)
        # stricter than fit_tol: two poles 0.05 apart still let one fewer head fit to ~1e-10
        if fit is not None and fit.residual <= DETECT_TOL:
            return fit
    return None


def _joint_polish(fits: list[_HeadFit], S: float, iterations: int = 30):
    """Gauss-Newton over all pairs of one key direction: shared gammas, one logit per head and pair.

    Returns (gamma (H,), logits (pairs, H), largest relative misfit, error bound of the parameters).
    """
    H, P = fits[0].gamma.size, len(fits)
    gamma = np.mean([f.gamma for f in fits], axis=0)
    logits = np.array([f.s for f in fits])
    log_t = [np.log(f.t) for f in fits]
    rows = sum(f.t.size for f in fits) + 1
    scale = max(abs(S), max(float(np.max(np.abs(f.F))) for f in fits))

    def residuals_and_jacobian():
        res = np.empty(rows)
        jac = np.zeros((rows, H + P * H))
        r = 0
        for p, f in enumerate(fits):
            sig = expit(logits[p][None, :] + log_t[p][:, None])
            k = f.t.size
            res[r:r + k] = sig @ gamma - f.F
            jac[r:r + k, :H] = sig
            jac[r:r + k, H + p * H:H + (p + 1) * H] = sig * (1 - sig) * gamma[None, :]
            r += k
        res[r] = gamma.sum() - S
        jac[r, :H] = 1.0
        return res, jac

    for _ in range(iterations):
        res, jac = residuals_and_jacobian()
        step = np.linalg.lstsq(jac, -res, rcond=None)[0]
        gamma = gamma + step[:H]
        logits = logits + step[H:].reshape(P, H)
        if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(logits)), np.max(np.abs(gamma))):
            break
    res, jac = residuals_and_jacobian()
    return gamma, logits, float(np.max(np.abs(res))) / scale, _error_bound(jac, scale)


def _error_bound(jac: np.ndarray, scale: float) -> float:
    """How far rounding-level (1e-16 relative) errors in the answers can move the fitted parameters."""
    smallest = np.linalg.svd(jac, compute_uv=False)[-1] if jac.size else 1.0
    return float(np.inf) if smallest == 0 else float(1e-16 * scale * np.sqrt(jac.shape[0]) / smallest)


def _logit_jacobian(gamma: np.ndarray, s: np.ndarray, t: np.ndarray) -> np.ndarray:
    sig = expit(s[None, :] + np.log(t)[:, None])
    return sig * (1 - sig) * gamma[None, :]


def _not_h_heads(heads: int) -> str:
    return (f"the target does not behave like {heads} canonical head(s) answering exactly; if it has "
            f"more heads, raise heads / max_heads (noisy or rounded answers are outside this learner's "
            f"assumptions)")


def _unit_off(x: np.ndarray, avoid) -> np.ndarray:
    """x with its components along the vectors in `avoid` removed, normalised."""
    if len(avoid):
        basis = np.linalg.qr(np.array(avoid).T)[0]
        x = x - basis @ (basis.T @ x)
    return x / np.linalg.norm(x)


def _room(logits: np.ndarray) -> float:
    """How far the logits of a pair can move before two poles meet or a softmax saturates."""
    return min(_min_gap(logits), SATURATION - float(np.max(np.abs(logits))))


def _min_gap(values: np.ndarray) -> float:
    return float(np.min(np.diff(np.sort(values)))) if values.size > 1 else float("inf")


def _separated(values: np.ndarray, gap: float) -> bool:
    return _min_gap(values) >= gap


# -- the learner -------------------------------------------------------------------------------
class _Learner:
    """State of one run of `multi_head`: the oracle, what is known so far, and the query ledger."""

    def __init__(self, oracle: Oracle, rng: np.random.Generator, heads: int | None, max_heads: int,
                 method: str, anchors: int, fit_tol: float, logit_tol: float, min_gap: float, max_logit: float,
                 progress: bool):
        self.oracle, self.rng, self.d = oracle, rng, oracle.d
        self.method = method
        self.anchors = anchors
        self.attempts = 20  # redraws of one probe before the learner gives up
        self.logit_tol = logit_tol  # largest error in a logit (from rounding in the answers) a probe may carry
        self.anchor_gap = 0.25  # continued tokens step eps = gap / 10 away from an anchor: errors grow as 1/eps
        self.error_bound = 0.0
        self.anchor_counts: list[int] = []
        self.heads, self.max_heads = heads, max_heads
        self.fit_tol, self.min_gap, self.max_logit = fit_tol, min_gap, max_logit
        self.stages = {"values": 0, "pairs": 0, "count": 0, "matching": 0, "rejected": 0, "check": 0}
        self.progress = progress
        self.b_norm = 1.0

    def ask(self, stage: str, sequences: list[np.ndarray]) -> np.ndarray:
        before = self.oracle.queries
        answers = self.oracle.query_many(sequences)
        self.stages[stage] += self.oracle.queries - before
        return answers

    def reject(self, spent: int) -> None:
        """Queries of a probe that was measured and then discarded are reported as rejected."""
        self.stages["pairs"] -= spent
        self.stages["rejected"] += spent

    def random_direction(self, avoid=()) -> np.ndarray:
        """A random unit vector mostly orthogonal to the vectors in `avoid`.

        Mostly, not exactly: the last of d directions would otherwise have no freedom left. The
        component along `avoid` is at most about 1/3, which keeps redrawn bases well conditioned.
        """
        away = _unit_off(self.rng.standard_normal(self.d), avoid)
        anywhere = _unit_off(self.rng.standard_normal(self.d), ())
        return _unit_off(away + 0.3 * anywhere, ())

    # -- measurements
    def measure(self, pairs: list[tuple[np.ndarray, np.ndarray]], points: int, stage: str = "pairs",
                exclude=()):
        """(t, F, S) per (u, b) pair, from `points` queries each (ratios other than `exclude`)."""
        layouts = _layouts(points, exclude)
        t = np.array([c / m for c, m in layouts], dtype=np.float64)
        answers = self.ask(stage, [q for u, b in pairs for q in _pair_queries(u, b, layouts)])
        answers = answers.reshape(len(pairs), points)
        return [(t, answers[k] - b @ self.V, float(u @ self.V)) for k, (u, b) in enumerate(pairs)]

    def fit_reference(self, u: np.ndarray, b: np.ndarray, detect: bool) -> tuple[_HeadFit | None, int]:
        """Fit the pair (u, b) whose gammas label the heads of direction u (None if unusable), and its cost."""
        points = 2 * self.max_heads + 1 if detect else 2 * self.heads - 1
        t, F, S = self.measure([(u, b)], points)[0]
        if detect:
            return _fewest_heads_fit(t, F, S, self.max_heads), points
        fit = _fit_heads(t, F, S, self.heads)
        return (fit if fit is not None and fit.residual <= self.fit_tol else None), points

    def usable(self, fit: _HeadFit, reference: bool) -> bool:
        """Poles apart and not saturated; for references also gammas apart and away from zero."""
        if np.any(np.abs(fit.s) > self.max_logit) or not _separated(fit.s, self.min_gap):
            return False
        if reference and fit.gamma.size:
            size = np.max(np.abs(fit.gamma))
            return bool(np.min(np.abs(fit.gamma)) >= 0.05 * size and _separated(fit.gamma, self.min_gap * size))
        return True

    def _count_heads(self) -> int:
        """Canonical heads seen by one more random probe pair (2 H0 + 1 queries, stage "count")."""
        u, b = self.random_direction(), self.b_norm * self.random_direction()
        t, F, S = self.measure([(u, b)], 2 * self.max_heads + 1, stage="count")[0]
        fit = _fewest_heads_fit(t, F, S, self.max_heads)
        return self.max_heads if fit is None else fit.gamma.size

    def match_to_first(self, first: _HeadFit, u1: np.ndarray, fit: _HeadFit, ui: np.ndarray,
                       b: np.ndarray) -> np.ndarray | None:
        """order with fit's head order[h] = first's head h, from added-token queries [b+u1, b+ui, b]."""
        H = first.gamma.size
        if H == 1:
            return np.zeros(1, dtype=int)
        perms = [np.array(p) for p in itertools.permutations(range(H))]
        lam1, lami = np.exp(first.s), np.exp(fit.s)
        bad = np.zeros(len(perms), dtype=bool)
        settled = np.zeros(len(perms), dtype=bool)
        for p, q, m in [(1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2)]:
            seq = np.vstack([np.repeat((b + u1)[None], p, 0), np.repeat((b + ui)[None], q, 0),
                             np.repeat(b[None], m, 0)])
            F = self.ask("matching", [seq])[0] - b @ self.V
            for k, perm in enumerate(perms):
                num = p * lam1 * first.gamma + q * lami[perm] * fit.gamma[perm]
                pred = float(np.sum(num / (p * lam1 + q * lami[perm] + m)))
                scale = max(abs(F), np.max(np.abs(first.gamma)))
                err = abs(pred - F) / scale
                bad[k] |= err > 1e-6
                settled[k] |= err > 1e-4
            alive = np.flatnonzero(~bad)
            if alive.size == 1 and np.all(settled[np.arange(len(perms)) != alive[0]]):
                return perms[alive[0]]
            if alive.size == 0:
                return None
        return perms[alive[0]] if alive.size == 1 else None

    # -- the whole run
    def run(self) -> tuple[MultiHeadParams, dict]:
        d = self.d
        eye = np.eye(d)
        self.V = self.ask("values", [eye[i][None] for i in range(d)])
        U = ortho_group.rvs(d, random_state=self.rng) if d > 1 else np.ones((1, 1))
        B = ortho_group.rvs(d, random_state=self.rng) if d > 1 else np.ones((1, 1))
        for attempt in range(3):
            spent_before = self.stages["pairs"]
            first, first_u = self._first_reference(U[:, 0], B[:, 0])
            H = self.heads
            if H == 0:
                return MultiHeadParams(np.zeros((0, d, d)), np.zeros((0, d))), {"b_norm": self.b_norm}
            first_direction = self._pairs(first_u, first, B)
            # d*H logits estimate the scale far better than the H of the first pair alone
            rms = float(np.sqrt(np.mean(first_direction[1] ** 2)))
            if 0.5 <= rms <= 1.4 or attempt == 2:
                break
            self.b_norm /= rms
            self.reject(self.stages["pairs"] - spent_before)
        directions, gammas, weights = [], [], []
        tokens, logits, gamma = first_direction
        first = _HeadFit(gamma, logits[0], 0.0)  # the polished reference: heads are labelled by it
        for i in tqdm(range(d), desc="multi-head directions", file=sys.stderr,
                      disable=not (self.progress and sys.stderr.isatty())):
            if i == 0:
                u, order = first_u, np.arange(H)
            else:
                u, order, (tokens, logits, gamma) = self._direction(
                    _unit_off(U[:, i], directions), first, first_u, B, directions)
            directions.append(u)
            gammas.append(gamma[order])
            weights.append(np.linalg.solve(tokens, logits[:, order]))  # column h: W_h^T u
        Umat = np.array(directions).T  # columns u_i
        if np.linalg.cond(Umat) > 1e6:
            raise ExtractionError("the accepted key directions are nearly dependent; rerun with another seed")
        gam = np.array(gammas)  # (d, H): gam[i, h] = u_i^T v_h
        v = np.linalg.solve(Umat.T, gam).T
        Wt = np.array(weights)  # (d, d, H): Wt[i, :, h] = W_h^T u_i
        W = np.stack([np.linalg.solve(Umat.T, Wt[:, :, h]) for h in range(H)])  # rows u_i^T W_h -> W_h
        return MultiHeadParams(W, v), {"b_norm": self.b_norm, "anchors": self.anchor_counts,
                                       "logit_error_bound": self.error_bound}

    def _first_reference(self, u: np.ndarray, b: np.ndarray, attempts: int = 40):
        """The reference pair of the first direction; fixes H (if unknown) and the scale of b.

        b is rescaled until the logits u^T W_h b have root-mean-square about 1: then the poles
        -exp(-logit) are apart and no softmax saturates over the ratios t in [1/(H+1), H+1].
        """
        detect = self.heads is None
        fallback_scales = iter([1 / 3, 3.0, 0.1, 10.0, 1 / 30, 30.0, 0.01, 100.0])
        failures, off_scale = 0, []
        for _ in range(attempts):
            fit, spent = self.fit_reference(u, self.b_norm * b, detect)
            if fit is None:
                self.reject(spent)
                failures += 1
                if failures % 3 == 0:  # repeated failure: more likely a bad scale than bad luck
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
            rms = float(np.sqrt(np.mean(fit.s ** 2)))
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
                return fit, u
            self.reject(spent)
            u = self.random_direction()
        raise ExtractionError(
            f"could not find a well-conditioned first probe pair with "
            f"{self.heads if self.heads is not None else 'up to ' + str(self.max_heads)} head(s): the target "
            f"may have more canonical heads than assumed (raise heads / max_heads), or is not a "
            f"multi-head regressor with exact answers"
        )

    def _direction(self, u, first: _HeadFit, first_u, B, accepted, attempts: int = 20):
        """Direction u read in full, its heads matched to the first direction's.

        Matching comes last, on the polished gammas and logits at the shared token B[:, 0]: the
        predictions of the added-token queries are then accurate enough to single out one order.
        A direction that does not work is replaced by a random one mostly orthogonal to those
        `accepted`.
        """
        b = self.b_norm * B[:, 0]
        for _ in range(attempts):
            spent_before = self.stages["pairs"]
            fit, spent = self.fit_reference(u, b, detect=False)
            if fit is not None and self.usable(fit, reference=True):
                pairs = self._pairs(u, fit, B)
                order = self.match_to_first(first, first_u, _HeadFit(pairs[2], pairs[1][0], 0.0), u, b)
                if order is not None:
                    return u, order, pairs
            self.reject(self.stages["pairs"] - spent_before)
            u = self.random_direction(avoid=accepted)
        raise ExtractionError(
            f"no usable probe direction after {attempts} tries: {_not_h_heads(self.heads)}"
        )

    def _fit_with_known_gammas(self, t, F, S, gamma: np.ndarray) -> _HeadFit | None:
        """The logits of one pair, heads in the order of `gamma` (the direction's known gammas).

        A free rational fit gives starting logits and, through its gammas, which head is which;
        with the gammas then held fixed, the 2H - 1 answers overdetermine the H logits, which a
        few Gauss-Newton steps pin down even when two poles are close.
        """
        H = gamma.size
        fit = _fit_heads(t, F, S, H)
        if fit is None:
            return None
        size = np.max(np.abs(gamma))
        cost = np.abs(fit.gamma[:, None] - gamma[None, :]) / size
        rows, cols = linear_sum_assignment(cost)
        gaps = np.abs(gamma[:, None] - gamma[None, :]) / size + np.eye(H)
        if float(cost[rows, cols].max()) > 0.25 * float(gaps.min()):
            return None  # the free fit is too rough to tell the heads apart
        order = np.empty(H, dtype=int)
        order[cols] = rows
        s = fit.s[order]
        log_t = np.log(t)
        for _ in range(30):
            sig = expit(s[None, :] + log_t[:, None])
            step = np.linalg.lstsq(sig * (1 - sig) * gamma[None, :], F - sig @ gamma, rcond=None)[0]
            s = s + step
            if np.max(np.abs(step)) <= 1e-15 * max(1.0, np.max(np.abs(s))):
                break
        held = _HeadFit(gamma, s, 0.0, t, F)
        scale = max(float(np.max(np.abs(F))), abs(S))
        held.residual = float(np.max(np.abs(held.model(t) - F))) / scale
        if not np.all(np.isfinite(s)) or held.residual > 1e-6 or np.any(np.abs(s) > self.max_logit):
            return None
        if _min_gap(s) < self.min_gap / 3 or _error_bound(_logit_jacobian(gamma, s, t), scale) > self.logit_tol:
            # two poles so close that the answers barely tell their logits apart (and Gauss-Newton
            # may stall in the valley between them, where the linearised bound is too optimistic)
            return None
        return held

    def _continue(self, u: np.ndarray, ref: _HeadFit, tokens: list[np.ndarray]) -> list[_HeadFit | None]:
        """Logits for tokens near the reference token: H answers each, 2H - 1 where Newton is unsafe."""
        H = ref.gamma.size
        measured = self.measure([(u, b) for b in tokens], H)
        results = [self._newton_from(ref, t, F, S) for t, F, S in measured]
        unsafe = [k for k, fit in enumerate(results) if fit is None]
        if unsafe and H > 1:
            first = _layouts(H)
            more = self.measure([(u, tokens[k]) for k in unsafe], H - 1, exclude=first)
            for k, (t, F, S) in zip(unsafe, more):
                t_all = np.concatenate([measured[k][0], t])
                F_all = np.concatenate([measured[k][1], F])
                results[k] = self._fit_with_known_gammas(t_all, F_all, S, ref.gamma)
                if results[k] is None:
                    self.reject(2 * H - 1)
        elif unsafe:
            self.reject(len(unsafe) * H)
        return results

    def _newton_from(self, ref: _HeadFit, t, F, S) -> _HeadFit | None:
        """Solve sum_h gamma_h sigmoid(s_h + log t_k) = F_k (k = 1..H) for s, starting at ref.s.

        Accepted only if it converges and moved the logits by under 0.3 of their smallest gap,
        so the root found is the one continuous with the reference (heads keep their labels).
        """
        gamma, s, log_t = ref.gamma, ref.s.copy(), np.log(t)
        scale = max(float(np.max(np.abs(F))), abs(S))

        def residual(x):
            return expit(x[None, :] + log_t[:, None]) @ gamma - F

        r = residual(s)
        for _ in range(60):
            sig = expit(s[None, :] + log_t[:, None])
            try:
                step = np.linalg.solve(sig * (1 - sig) * gamma[None, :], -r)
            except np.linalg.LinAlgError:
                return None
            length = 1.0
            while True:  # backtracking keeps Newton from overshooting across a flat sigmoid
                trial = s + length * step
                r_trial = residual(trial)
                if np.linalg.norm(r_trial) < np.linalg.norm(r) or length < 1e-6:
                    break
                length /= 2
            s, r = trial, r_trial
            if np.max(np.abs(length * step)) <= 1e-15 * max(1.0, np.max(np.abs(s))):
                break
        if not np.all(np.isfinite(s)) or np.max(np.abs(r)) > self.fit_tol * scale or np.any(np.abs(s) > self.max_logit):
            return None
        if s.size > 1 and np.max(np.abs(s - ref.s)) > 0.3 * _min_gap(s):
            return None
        if _min_gap(s) < self.min_gap / 3 or _error_bound(_logit_jacobian(gamma, s, t), scale) > self.logit_tol:
            return None
        return _HeadFit(gamma, s, float(np.max(np.abs(r))) / scale, t, F)

    def _pairs(self, u: np.ndarray, ref: _HeadFit, B: np.ndarray):
        """Query tokens b (rows), logits u^T W_h b and gammas u^T v_h of direction u, heads in ref's order.

        "interpolation": every token is an anchor: a fresh orthonormal direction with its own
        (2H - 1)-point rational fit, matched to the reference by its gammas.
        "continuation": `self.anchors` anchors fix the gammas (their redundant equations make
        them accurate); the other tokens a + eps e_j stay close to the best-separated anchor a,
        so their logits are close to a's and, the gammas known, H answers and Newton's method
        started at a's logits find them (2H - 1 answers where that is not safe).
        All pairs of the direction are finally refitted together with shared gammas.
        """
        H, d = ref.gamma.size, B.shape[1]
        S = float(u @ self.V)
        continuation = self.method == "continuation"
        # with one head a full fit costs 2H - 1 = H answers: every token is an anchor
        count = min(d, self.anchors) if continuation and H > 1 else d
        tokens, fits = self._anchors(u, ref, [self.b_norm * B[:, j] for j in range(count)])
        if continuation and count < d:
            gamma, logits, _, bound = _joint_polish(fits, S)
            while count < d and (bound > self.logit_tol or (
                    count < 2 * self.anchors and max(_room(row) for row in logits) < self.anchor_gap)):
                # one more anchor when the gammas every continued token relies on are not pinned
                # down yet, or when no anchor's logits are far enough apart for a large step eps
                extra = self.b_norm * _unit_off(B[:, count], tokens)
                more_tokens, more_fits = self._anchors(u, ref, [tokens[0], extra], avoid=tokens)
                tokens.append(more_tokens[1])
                fits.append(more_fits[1])
                count += 1
                gamma, logits, _, bound = _joint_polish(fits, S)
            best = int(np.argmax([_room(row) for row in logits]))
            anchor = _HeadFit(gamma, logits[best], 0.0)
            # the logit shifts are ~ eps * (rms logit ~ 1): keep them well inside the pole gaps
            # and away from saturation
            self.anchor_counts.append(count)
            eps = float(np.clip(0.1 * _room(anchor.s), 0.01, 0.1))
            complement = np.linalg.qr(np.array(tokens).T, mode="complete")[0][:, count:]
            steps = [eps * self.b_norm * complement[:, j] for j in range(d - count)]
            for _ in range(self.attempts):
                if not steps:
                    break
                retry = []
                todo = [tokens[best] + step for step in steps]
                for b, step, fit in zip(todo, steps, self._continue(u, anchor, todo)):
                    if fit is None:
                        retry.append(step / 2)  # same direction, a safer (smaller) step
                    else:
                        tokens.append(b)
                        fits.append(fit)
                steps = retry
            todo = steps
            if todo:
                raise ExtractionError(
                    f"{len(todo)} query tokens gave no usable fit after {self.attempts} redraws: {_not_h_heads(H)}")
        tokens_matrix = np.array(tokens)
        if np.linalg.cond(tokens_matrix) > 1e6:
            raise ExtractionError("the accepted query tokens are nearly dependent; rerun with another seed")
        gamma, logits, residual, bound = _joint_polish(fits, S)
        self.error_bound = max(self.error_bound, bound)
        if residual > self.fit_tol:
            raise ExtractionError(
                f"the probes of one key direction disagree by {residual:.1e} (relative): {_not_h_heads(H)}"
            )
        return tokens_matrix, logits, gamma

    def _anchors(self, u: np.ndarray, ref: _HeadFit, todo: list[np.ndarray], avoid=()):
        """The reference pair (todo[0]) plus fully interpolated pairs at the other tokens in todo.

        A token that does not work is replaced by a random one orthogonal to the accepted ones."""
        H = ref.gamma.size
        tokens, fits = [todo[0]], [ref]
        todo = todo[1:]
        for attempt in range(self.attempts):
            if not todo:
                return tokens, fits
            retry = []
            # later redraws are shorter: the direction left over may carry large logits
            norm = self.b_norm * 0.8 ** (attempt + 1)
            for b, (t, F, S) in zip(todo, self.measure([(u, b) for b in todo], 2 * H - 1)):
                fit = self._fit_with_known_gammas(t, F, S, ref.gamma)
                if fit is None:
                    self.reject(2 * H - 1)
                    retry.append(norm * self.random_direction(avoid=list(avoid) + tokens))
                else:
                    tokens.append(b)
                    fits.append(fit)
            todo = retry
        raise ExtractionError(
            f"{len(todo)} query tokens gave no usable fit after {self.attempts} redraws: {_not_h_heads(H)}")


def multi_head(oracle: Oracle, heads: int | None = None, max_heads: int | None = None, *,
               method: str = "continuation", anchors: int = 2, seed=0, check_queries: int | None = None, fidelity_samples: int = 1000, fit_tol: float = 1e-9,
               logit_tol: float = 1e-9,
               min_gap: float = 0.03, max_logit: float = 4.5, progress: bool = False) -> Extraction:
    """Learn the canonical form of a multi-head regressor from exact value queries.

    Parameters
    ----------
    oracle : Oracle
        Value queries to f(X) = sum_h softmax(X W_h x_N)^T X v_h; its d must be set.
    heads : int, optional
        The number H of canonical heads, if known.
    max_heads : int, optional
        An upper bound H0 instead: the first probe (2 H0 + 1 queries) finds H <= H0.
    method : "continuation" or "interpolation"
        How the logits of each key direction are read once its gammas are known: H queries per
        query token by Newton continuation from a nearby token (default, about H(d^2 + d) + 2d
        queries in all), or a separate (2H - 1)-point rational fit per token (about
        (2H - 1) d^2 + 2d; simpler, kept for comparison).
    anchors : int
        For "continuation": tokens per key direction read by a full (2H - 1)-point fit. Their
        redundancy pins down the gammas that every other token of the direction relies on; each
        costs H - 1 queries more than a continued token.
    seed : int or Generator
        Chooses the random probe directions.
    check_queries : int, optional
        Random sequences on which the recovered map must match the oracle to 1e-6 (relative)
        before it is returned, else ExtractionError; counted in `queries` (stage "check").
        Default: 2 when the learner counts heads (max_heads), 0 when H is given.
    fidelity_samples : int
        Fresh random sequences (lengths 1..32) on which the result is compared with the oracle
        afterwards, reported as `fidelity`; counted in `fidelity_queries`, not in `queries`.
    fit_tol, min_gap, max_logit : float
        A probe pair is used only if its rational fit leaves a relative residual <= fit_tol and
        (for the pairs that label heads) its logits u^T W_h b are >= min_gap apart and at most
        max_logit in size; otherwise it is redrawn (its queries count under stages["rejected"]).

    Returns an Extraction with params "W" (H, d, d) and "v" (H, d) in canonical order (as
    `attnlab.multihead.canonical` sorts), queries read from the oracle, dof = H (d^2 + d),
    info["heads_found"] and info["published_bound"] = 4 H d^2 - 2 H + 1.
    """
    if oracle.d is None:
        raise ValueError("the oracle's token width is unknown: build it as Oracle(target, d=...)")
    if heads is None and max_heads is None:
        raise ValueError("give heads=H (number of canonical heads) or max_heads=H0 (an upper bound)")
    for name, value in (("heads", heads), ("max_heads", max_heads)):
        if value is not None and not 0 <= value <= MAX_HEADS:
            raise ValueError(f"{name} must be in [0, {MAX_HEADS}], got {value}")
    if heads is not None and max_heads is not None and heads > max_heads:
        raise ValueError(f"heads = {heads} exceeds max_heads = {max_heads}")
    if fidelity_samples < 0:
        raise ValueError(f"fidelity_samples must be >= 0, got {fidelity_samples}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if anchors < 1:
        raise ValueError(f"anchors must be >= 1, got {anchors}")
    if check_queries is None:
        check_queries = 2 if heads is None else 0
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    start, clock = oracle.queries, time.perf_counter()
    learner = _Learner(oracle, rng, heads, max_heads if heads is None else heads, method, anchors,
                       fit_tol, logit_tol, min_gap, max_logit, progress)
    params, extra = learner.run()
    order = canonical_order(params.W, params.v)
    params = MultiHeadParams(params.W[order], params.v[order])
    if check_queries:
        _check(learner, params, check_queries)
    H, d = params.heads, oracle.d
    result = Extraction(
        params={"W": params.W, "v": params.v},
        queries=oracle.queries - start,
        method=f"multi-head-{method}" + ("" if heads is not None else "-count"),
        dof=canonical_dof(H, d),
        seconds=time.perf_counter() - clock,
        stages={k: v for k, v in learner.stages.items() if v},
        info={"heads_found": H, "published_bound": published_query_bound(max(H, 1), d), **extra},
        surrogate=params,
    )
    _measure(result, oracle, rng, fidelity_samples)
    return result


def _measure(result: Extraction, oracle: Oracle, rng: np.random.Generator, samples: int) -> None:
    if samples:
        result.fidelity, result.fidelity_queries = measure_fidelity(
            oracle, result.surrogate, n=samples, lengths=(1, 32), seed=int(rng.integers(2 ** 31)))


def _subspace_oracle(parent: Oracle, basis: np.ndarray) -> Oracle:
    """An oracle on subspace coordinates: z-tokens become z @ basis.T, and the parent answers (and counts)."""
    return Oracle(lambda Z: parent(np.asarray(Z) @ basis.T), d=basis.shape[1])


def orthogonal_heads(oracle: Oracle, bases, *, seed=0, fidelity_samples: int = 1000,
                     ortho_tol: float = 1e-10) -> Extraction:
    """Learn heads that live in known pairwise orthogonal subspaces, one single-head run per subspace.

    `bases[h]` is a (d, d_h) matrix with orthonormal columns spanning head h's subspace S_h, and
    the subspaces are pairwise orthogonal (W_h = P_h W_h P_h, v_h in S_h). Tokens inside S_h
    leave every other head with uniform attention over zero values, so the oracle restricted to
    S_h is head h alone: `single_head` recovers it with d_h^2 + d_h queries, sum_h (d_h^2 + d_h)
    in all, every one of them sent through (and counted by) `oracle`.
    Heads come back in the order of `bases`.
    """
    from attnlab.extract.single_head import single_head

    if oracle.d is None:
        raise ValueError("the oracle's token width is unknown: build it as Oracle(target, d=...)")
    d = oracle.d
    bases = [np.asarray(B, dtype=np.float64) for B in bases]
    if not bases:
        raise ValueError("give at least one subspace basis")
    for h, B in enumerate(bases):
        if B.ndim != 2 or B.shape[0] != d or B.shape[1] < 1:
            raise ValueError(f"bases[{h}] must have shape ({d}, d_h) with d_h >= 1, got {B.shape}")
    stacked = np.hstack(bases)
    gram = stacked.T @ stacked
    if stacked.shape[1] > d or np.max(np.abs(gram - np.eye(gram.shape[0]))) > ortho_tol:
        raise ValueError(
            "the bases must have orthonormal columns and span pairwise orthogonal subspaces "
            f"(largest deviation of the joint Gram matrix from I: {np.max(np.abs(gram - np.eye(gram.shape[0]))) if stacked.shape[1] <= d else 'more columns than d'}); "
            "orthonormalise them (e.g. numpy.linalg.qr) or use multi_head, which needs no subspaces"
        )
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    start, clock = oracle.queries, time.perf_counter()
    Ws, vs, stages = [], [], {}
    for h, B in enumerate(bases):
        before = oracle.queries
        head = single_head(_subspace_oracle(oracle, B), seed=rng, fidelity_samples=0)
        Ws.append(B @ head.W @ B.T)
        vs.append(B @ head.v)
        stages[f"head_{h}"] = oracle.queries - before
    dims = [B.shape[1] for B in bases]
    params = MultiHeadParams(np.stack(Ws), np.stack(vs))
    result = Extraction(
        params={"W": params.W, "v": params.v},
        queries=oracle.queries - start,
        method="orthogonal-subspaces",
        dof=sum(k * k + k for k in dims),
        seconds=time.perf_counter() - clock,
        stages=stages,
        info={"subspace_dims": dims, "heads_found": len(bases)},
        surrogate=params,
    )
    _measure(result, oracle, rng, fidelity_samples)
    return result


def _check(learner: _Learner, params: MultiHeadParams, n: int) -> None:
    seqs = random_sequences(learner.rng, params.d, n, lengths=(2, 8))
    answers = learner.ask("check", seqs)
    predicted = np.array([params(s[None])[0] for s in seqs])
    scale = max(1.0, float(np.max(np.abs(answers))))
    worst = float(np.max(np.abs(predicted - answers))) / scale
    if worst > 1e-6:
        raise ExtractionError(
            f"the recovered {params.heads}-head model misses the oracle by {worst:.2e} (relative) on fresh "
            f"queries: {_not_h_heads(params.heads)}"
        )
