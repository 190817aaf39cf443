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


def token_width(oracle: Oracle) -> int:
    """oracle.d, or a ValueError saying how to give the oracle its token width."""
    if oracle.d is None:
        raise ValueError("the oracle does not know the token width yet; create it with "
                         "Oracle(target, d=d) or send it one query first")
    return int(oracle.d)


def resolve_method(method: str, method_options: Mapping[str, Any] | None,
                   defaults: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The options of `method`: its defaults updated by `method_options`.

    `defaults` maps each method name to its options and their default values. An unknown
    method, or an option the chosen method does not take, raises ValueError naming what is
    allowed.
    """
    if method not in defaults:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(map(repr, defaults))}")
    allowed = defaults[method]
    given = dict(method_options or {})
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        names = ", ".join(sorted(allowed)) or "none"
        raise ValueError(f"method={method!r} does not take the option(s) {', '.join(unknown)}; "
                         f"its method_options are: {names}")
    return {**allowed, **given}
