"""The checks every public extractor shares (see docs/architecture.md, "The extractor convention").

    extractor(oracle, *, <model options>, method="<default>", method_options=None, seed=0,
              fidelity_samples=<default>, progress=False) -> Extraction

`resolve_method` validates `method` and `method_options` against a table of the options each
method accepts, so no extractor writes "option X only with method Y" checks by hand.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attnlab.oracle import Oracle


def token_width(oracle: Oracle, who: str = "this extractor") -> int:
    """oracle.d, or the standard ValueError; delegates to `Oracle.require_d` (the one check)."""
    require_d = getattr(oracle, "require_d", None)
    if require_d is not None:
        return int(require_d(who))
    if oracle.d is None:  # an oracle-like object without require_d (a test double, a wrapper)
        raise ValueError(
            f"{who} needs the token width: Oracle(target, d=...) (this oracle was not "
            "told it, and its target does not state it)"
        )
    return int(oracle.d)


class NoisyOracleWarning(UserWarning):
    """An exact extractor was handed an oracle with a noise model: its answers are not exact, so
    the recovered parameters may be silently wrong; use `noisy_single_head` (the robust estimator)."""


# Relative answer noise below this (float64 rounding, float32 rounding) leaves exact methods exact.
NOISE_TOLERANCE = 1e-6


def warn_if_noisy(oracle: Oracle, who: str) -> None:
    """Warn NoisyOracleWarning when `oracle.noise` can move answers by more than NOISE_TOLERANCE."""
    import warnings

    import numpy as np

    noise = getattr(oracle, "noise", None)
    if noise is None:
        return
    try:
        scale = float(np.max(noise.scale(np.ones(1))))
    except Exception:  # a custom noise model without scale(): assume it matters
        scale = float("inf")
    if scale > NOISE_TOLERANCE:
        warnings.warn(
            f"{who} is exact and assumes exact answers, but this oracle adds noise "
            f"({type(noise).__name__}, scale {scale:.1e}): the result may be silently wrong; "
            "use attnlab.extract.noisy_single_head (the robust estimator) for noisy answers",
            NoisyOracleWarning,
            stacklevel=3,
        )


def resolve_method(
    method: str, method_options: Mapping[str, Any] | None, defaults: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The options of `method`: its defaults updated by `method_options`.

    `defaults` maps each method name to its options and their default values. An unknown
    method, or an option the chosen method does not take, raises ValueError naming what is
    allowed.
    """
    if method not in defaults:
        raise ValueError(
            f"unknown method {method!r}; choose one of {', '.join(map(repr, defaults))}"
        )
    allowed = defaults[method]
    given = dict(method_options or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise ValueError(
            f"method={method!r} does not take the option(s) {', '.join(unknown)}; "
            f"its method_options are: {names}"
        )
    return {**allowed, **given}
