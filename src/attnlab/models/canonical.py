"""The canonical form of multi-head attention. It is not identifiable: distinct parameters, one map (Prop. 7.1, made concrete).

f(X) = sum_h softmax(X W_h x_N)^T X v_h is unchanged when
  * heads that share W split their v differently (only the sum of their v's matters),
  * heads are permuted,
  * a head with v = 0 and an arbitrary W is added or removed.
`canonical` removes exactly these symmetries: it merges heads with equal W, sums their v and drops
heads whose summed v is zero. Two parameterisations compute the same map iff their canonical forms
agree up to the order of heads (`equivalent`); `maps_agree` checks the maps themselves on random
queries, and `canonical_error` measures how far a recovered canonical form is from the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from attnlab._random import as_generator
from attnlab.models.numpy_heads import head_forward


@dataclass(frozen=True)
class MultiHeadParams:
    """Heads of a multi-head regressor: W (H, d, d), v (H, d); affine heads add u (H, d) and c.

    f(X) = c + sum_h softmax(X W_h x_N + X u_h)^T X v_h. Without biases u = 0 and c = 0. (A
    head's value bias adds a constant, because its attention weights sum to one: the heads'
    constants are summed into the one shared c. Query-side terms that do not depend on the key
    token cancel in the softmax.)
    """

    W: np.ndarray
    v: np.ndarray
    u: np.ndarray | None = None
    c: float = 0.0

    def __post_init__(self):
        W = np.asarray(self.W, dtype=np.float64)
        v = np.asarray(self.v, dtype=np.float64)
        if v.ndim != 2 or W.shape != (v.shape[0], v.shape[1], v.shape[1]):
            raise ValueError(
                f"expected W of shape (H, d, d) and v of shape (H, d); got {W.shape} and {v.shape}"
            )
        u = np.zeros_like(v) if self.u is None else np.asarray(self.u, dtype=np.float64)
        if u.shape != v.shape:
            raise ValueError(
                f"expected u of shape {v.shape} (one key bias term per head), got {u.shape}"
            )
        object.__setattr__(self, "W", W)
        object.__setattr__(self, "v", v)
        object.__setattr__(self, "u", u)
        object.__setattr__(self, "c", float(self.c))

    @property
    def heads(self) -> int:
        return self.v.shape[0]

    @property
    def d(self) -> int:
        return self.v.shape[1]

    @property
    def affine(self) -> bool:
        return bool(np.any(self.u != 0) or self.c != 0)

    @classmethod
    def from_model(cls, model) -> MultiHeadParams:
        """Read (Ws, vs) from a MultiHeadRegressor."""
        return cls(
            model.Ws.detach().cpu().double().numpy(), model.vs.detach().cpu().double().numpy()
        )

    def to_model(self):
        from attnlab.models.multihead import MultiHeadRegressor

        if self.affine:
            raise ValueError(
                "MultiHeadRegressor has no biases; evaluate affine parameters by calling them"
            )
        return MultiHeadRegressor(self.W, self.v)

    def __call__(self, X) -> np.ndarray:
        """The map itself on a batch (B, N, d), in float64 numpy (no torch needed)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 3 or X.shape[-1] != self.d:
            raise ValueError(f"expected a batch of shape (B, N, {self.d}), got shape {X.shape}")
        if self.heads == 0:
            return np.full(X.shape[0], self.c)
        return head_forward(X, self.W, self.v, self.u, self.c)

    def to_dict(self) -> dict:
        out = {"W": self.W.tolist(), "v": self.v.tolist()}
        if self.affine:
            out.update(u=self.u.tolist(), c=self.c)
        return out


# -- the symmetries ---------------------------------------------------------------------------
def split_head(params: MultiHeadParams, head: int, parts: int = 2, seed=0) -> MultiHeadParams:
    """Replace `head` by `parts` heads with the same W whose v's are a random split of its v."""
    if not 0 <= head < params.heads:
        raise ValueError(f"head must be in [0, {params.heads}), got {head}")
    if parts < 1:
        raise ValueError(f"parts must be >= 1, got {parts}")
    rng = as_generator(seed)
    pieces = rng.standard_normal((parts - 1, params.d))
    pieces = np.vstack([pieces, params.v[head] - pieces.sum(axis=0)])
    W = np.concatenate(
        [np.delete(params.W, head, axis=0), np.repeat(params.W[head][None], parts, axis=0)]
    )
    v = np.concatenate([np.delete(params.v, head, axis=0), pieces])
    return MultiHeadParams(W, v)


def resplit_shared(params: MultiHeadParams, seed=0, tol: float = 1e-12) -> MultiHeadParams:
    """Redistribute v among every group of heads sharing one W, keeping each group's sum of v."""
    rng = as_generator(seed)
    v = params.v.copy()
    for group in _groups_of_equal_W(params.W, tol):
        if len(group) > 1:
            shift = rng.standard_normal((len(group), params.d))
            v[group] += shift - shift.mean(axis=0)
    return MultiHeadParams(params.W.copy(), v)


def permute_heads(params: MultiHeadParams, order=None, seed=0) -> MultiHeadParams:
    """The same heads in another order (a random one unless `order` is given)."""
    order = as_generator(seed).permutation(params.heads) if order is None else np.asarray(order)
    if sorted(order.tolist()) != list(range(params.heads)):
        raise ValueError(
            f"order must be a permutation of 0..{params.heads - 1}, got {order.tolist()}"
        )
    return MultiHeadParams(params.W[order], params.v[order], params.u[order], params.c)


def add_null_head(params: MultiHeadParams, W=None, seed=0, scale: float = 1.0) -> MultiHeadParams:
    """Add a head with v = 0 and an arbitrary W (random with entry scale `scale` unless given)."""
    d = params.d
    W_new = (
        scale * as_generator(seed).standard_normal((d, d))
        if W is None
        else np.asarray(W, dtype=np.float64)
    )
    if W_new.shape != (d, d):
        raise ValueError(f"the added head's W must have shape ({d}, {d}), got {W_new.shape}")
    return MultiHeadParams(
        np.concatenate([params.W, W_new[None]]), np.concatenate([params.v, np.zeros((1, d))])
    )


# -- canonical form and equivalence -------------------------------------------------------------
def _scale(a: np.ndarray) -> float:
    return max(1.0, float(np.max(np.abs(a)))) if a.size else 1.0


def _groups_of_equal_W(W: np.ndarray, tol: float) -> list[list[int]]:
    """Heads grouped by equal W (max entry difference <= tol * scale), transitively."""
    scale = _scale(W)
    parent = list(range(W.shape[0]))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(W.shape[0]):
        for j in range(i):
            if np.max(np.abs(W[i] - W[j])) <= tol * scale:
                parent[root(i)] = root(j)
    groups: dict[int, list[int]] = {}
    for i in range(W.shape[0]):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def canonical_order(W: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The canonical order of heads: lexicographic in v (first coordinate first), then in W."""
    if W.shape[0] == 0:
        return np.arange(0)
    keys = np.concatenate([v, W.reshape(W.shape[0], -1)], axis=1)
    return np.lexsort(keys.T[::-1])


def canonical(params: MultiHeadParams, tol: float = 1e-9) -> MultiHeadParams:
    """Merge heads with equal (W, u), sum their v, drop heads whose summed v is zero; canonical order.

    "Equal" and "zero" are up to `tol` relative to the largest entry (or 1, whichever is larger).
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    d = params.d
    keys = np.concatenate([params.W.reshape(params.heads, -1), params.u], axis=1)
    groups = _groups_of_equal_W(keys.reshape(params.heads, 1, -1), tol)
    W = np.array([params.W[g].mean(axis=0) for g in groups]).reshape(-1, d, d)
    u = np.array([params.u[g].mean(axis=0) for g in groups]).reshape(-1, d)
    v = np.array([params.v[g].sum(axis=0) for g in groups]).reshape(-1, d)
    keep = np.max(np.abs(v), axis=1, initial=0.0) > tol * _scale(params.v)
    W, u, v = W[keep], u[keep], v[keep]
    order = canonical_order(W, v)
    return MultiHeadParams(W[order], v[order], u[order], params.c)


def match_heads(estimate: MultiHeadParams, truth: MultiHeadParams) -> tuple[np.ndarray, float]:
    """The order of `estimate`'s heads that best matches `truth`'s, and the resulting relative error.

    Heads are paired by a minimum-cost assignment on the largest entry difference; the error is
    max |estimate - truth| over all matched W and v entries divided by the largest truth entry.
    """
    if estimate.heads != truth.heads or estimate.d != truth.d:
        raise ValueError(
            f"cannot match {estimate.heads} heads of width {estimate.d} with {truth.heads} heads of "
            f"width {truth.d}; compare canonical forms with the same number of heads"
        )
    if truth.heads == 0:
        return np.arange(0), 0.0
    diff_W = np.abs(estimate.W[:, None] - truth.W[None]).max(axis=(2, 3))
    diff_v = np.abs(estimate.v[:, None] - truth.v[None]).max(axis=2)
    diff_u = np.abs(estimate.u[:, None] - truth.u[None]).max(axis=2)
    rows, cols = linear_sum_assignment(np.maximum(np.maximum(diff_W, diff_v), diff_u))
    order = np.empty(truth.heads, dtype=int)
    order[cols] = rows
    worst = max(
        np.max(np.abs(estimate.W[order] - truth.W)),
        np.max(np.abs(estimate.v[order] - truth.v)),
        np.max(np.abs(estimate.u[order] - truth.u)),
        abs(estimate.c - truth.c),
    )
    scale = max(
        np.max(np.abs(truth.W)), np.max(np.abs(truth.v)), np.max(np.abs(truth.u)), abs(truth.c)
    )
    return order, float(worst / scale) if scale > 0 else float(worst)


def canonical_error(estimate: MultiHeadParams, truth: MultiHeadParams, tol: float = 1e-9) -> float:
    """Relative error between the canonical forms of two parameterisations (inf if head counts differ)."""
    a, b = canonical(estimate, tol), canonical(truth, tol)
    if a.heads != b.heads or a.d != b.d:
        return float("inf")
    return match_heads(a, b)[1]


def equivalent(p: MultiHeadParams, q: MultiHeadParams, tol: float = 1e-9) -> bool:
    """True iff p and q have the same canonical form up to the order of heads (within `tol`)."""
    return canonical_error(p, q, tol) <= tol


def maps_agree(
    p: MultiHeadParams,
    q: MultiHeadParams,
    n: int = 10_000,
    lengths=(1, 64),
    seed=0,
    scale: float = 1.0,
) -> float:
    """Largest |p(X) - q(X)| over n random sequences with lengths in [lengths[0], lengths[1]]."""
    if p.d != q.d:
        raise ValueError(f"the two parameterisations have different token widths {p.d} and {q.d}")
    rng = as_generator(seed)
    sizes = rng.integers(lengths[0], lengths[1] + 1, size=n)
    worst = 0.0
    for k in np.unique(sizes):
        batch = scale * rng.standard_normal((int(np.sum(sizes == k)), int(k), p.d))
        worst = max(worst, float(np.max(np.abs(p(batch) - q(batch)))))
    return worst


# -- the demonstration --------------------------------------------------------------------------
def equivalent_pair(
    d: int, heads: int = 2, seed=0, scale: float = 1.0
) -> tuple[MultiHeadParams, MultiHeadParams, list[str]]:
    """A random parameterisation p and a different-looking q computing the same map, with the steps used."""
    from attnlab.models.multihead import MultiHeadRegressor

    rng = as_generator(seed)
    p = MultiHeadParams.from_model(MultiHeadRegressor.random(d, heads, scale=scale, seed=rng))
    q = split_head(p, head=0, parts=2, seed=rng)
    q = add_null_head(q, seed=rng, scale=scale)
    q = permute_heads(q, seed=rng)
    steps = [
        "split head 0 into two heads sharing its W, with v_0 = a + (v_0 - a) for a random a",
        "added a head with v = 0 and a random W",
        "permuted the heads randomly",
    ]
    return p, q, steps


def single_head_probes(d: int, seed=0) -> list[np.ndarray]:
    """The d one-token and d^2 two-token probes of the exact single-head learner (Thm 4.1)."""
    rng = as_generator(seed)
    U = rng.standard_normal((d, d)) / np.sqrt(d)
    eye = np.eye(d)
    probes = [eye[i][None] for i in range(d)]
    probes += [np.stack([U[k] + eye[j], eye[j]]) for j in range(d) for k in range(d)]
    return probes


__all__ = [
    "MultiHeadParams",
    "split_head",
    "resplit_shared",
    "permute_heads",
    "add_null_head",
    "canonical_order",
    "canonical",
    "match_heads",
    "canonical_error",
    "equivalent",
    "maps_agree",
    "equivalent_pair",
    "single_head_probes",
]
