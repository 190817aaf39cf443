"""Wording helpers for the report and the terminal summary: ranges, shares, headers, shortening.

They exist so that the report never prints a degenerate phrase ("65x to 65x"), never rounds a
share up to "100.00%" when something was missed, and never cuts a sentence mid-word.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable

ELLIPSIS = "…"


def span(
    values: Iterable[float], fmt: Callable[[float], str] = "{:.3g}".format, unit: str = ""
) -> str:
    """'3x to 65x' for a spread of values, '65x' when they all print the same."""
    vals = list(values)
    if not vals:
        raise ValueError("span() needs at least one value")
    lo, hi = fmt(min(vals)) + unit, fmt(max(vals)) + unit
    return lo if lo == hi else f"{lo} to {hi}"


def share(part: float, whole: float, digits: int = 1) -> str:
    """part / whole as a percentage that says 100% only when part == whole, 0% only when 0.

    99,999 of 100,000 prints '>99.9%', not '100.0%'; 1 of 100,000 prints '<0.1%'. Counts or
    fractions: share(0.9996, 1.0) prints '>99.9%'."""
    if whole <= 0:
        raise ValueError(f"share() needs a positive whole, got {whole}")
    if not 0 <= part <= whole:
        raise ValueError(f"share() needs 0 <= part <= whole, got {part} of {whole}")
    if part == whole:
        return "100%"
    if part == 0:
        return "0%"
    pct = 100.0 * part / whole
    step = 10.0**-digits
    text = f"{pct:.{digits}f}%"
    if float(text[:-1]) >= 100.0:
        return f">{100 - step:.{digits}f}%"
    if float(text[:-1]) <= 0.0:
        return f"<{step:.{digits}f}%"
    return text


def shorten(text: str, width: int) -> str:
    """The first line of `text`, cut at a word boundary to at most `width` characters.

    A cut ends in '…'; a single word longer than `width` is the only thing cut mid-word."""
    if width < 2:
        raise ValueError(f"shorten() needs width >= 2, got {width}")
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    if len(line) <= width:
        return line
    room = width - len(ELLIPSIS)
    cut = line[: room + 1]
    boundary = cut.rfind(" ")
    if boundary <= 0:
        return line[:room] + ELLIPSIS
    return line[:boundary].rstrip(" ,;:-(") + ELLIPSIS


# Column names the claims use, as a reader wants to see them. Keys are matched exactly; the
# generic rules below handle the rest.
HEADERS = {
    "ok": "within bound",
    "tau": "noise bound τ",
    "W scale": "scale of W",
    "d^2+d": "d² + d (Thm 4.1)",
    "d^2+2d+1": "d² + 2d + 1",
    "2(d^2+d)": "2(d² + d)",
    "limit 2rd-r^2+d": "information limit 2rd − r² + d",
    "4Hd^2-2H+1": "published bound 4Hd² − 2H + 1",
    "H(d^2+d)": "free parameters H(d² + d)",
    "queries / bound": "queries ÷ published bound",
    "fidelity (max abs)": "largest output error on fresh sequences",
    "fidelity": "largest output error",
    "fresh queries": "fresh sequences compared",
    "paper ||dW||_F": "paper's estimator: ‖Ŵ − W‖_F",
    "robust ||dW||_F": "ours: ‖Ŵ − W‖_F",
    "paper queries": "paper's estimator: queries",
    "robust queries": "ours: queries",
    "max |f_p - f_q|": "largest |f_p − f_q|",
    "heads p": "heads in p",
    "heads q": "heads in q",
    "p (bits)": "precision p (bits)",
    "m = d' + m'": "width m = d' + m'",
    "m' / (q log2 N)": "m' ÷ (q log₂ N)",
    "eps = 1/(2q)": "target error 1/(2q)",
    "m' < N (not one-hot)": "narrower than one-hot (m' < N)",
    "d' + 2q": "d' + 2q (Thm 3)",
    "bits p needed": "bits of precision needed",
    "2q log2 N": "2q log₂ N",
    "bits p": "precision p (bits)",
}
_GENERIC = [
    (re.compile(r"^rel error (.+)$"), r"relative error of \1"),
    (re.compile(r"^param rel_error_(\w+)$"), r"relative error of parameter \1"),
    (re.compile(r"^param error_(\w+)$"), r"error of parameter \1"),
]


def human_header(column: str) -> str:
    """A table column as a reader wants it ('rel error W' -> 'relative error of W')."""
    if column in HEADERS:
        return HEADERS[column]
    for pattern, replacement in _GENERIC:
        if pattern.match(column):
            return pattern.sub(replacement, column)
    return column.replace("_", " ")


def number(value: object) -> str:
    """A table cell: yes/no for booleans, 4 significant digits, scientific when tiny or huge."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if math.isinf(value):
            return "∞" if value > 0 else "−∞"
        if value == 0:
            return "0"
        if abs(value) < 1e-3 or abs(value) >= 1e5:
            return f"{value:.2e}"
        return f"{value:.4g}"
    if value is None:
        return "n/a"
    return str(value)
