"""What ties a query journal to one target: width, identity, noise model and probe answers.

A journal's answers are only worth replaying for the target that gave them. When an Oracle opens
a journal it compares what it knows without asking anything (d, `journal_id`, the noise model)
and then re-asks a few fixed probe queries and compares the answers with the stored ones.
"""

from __future__ import annotations

import numpy as np

from attnlab.errors import JournalError, JournalMismatch
from attnlab.oracle.journal import QueryJournal

PROBE_TOKENS = 4
# Probe answers of one target agree to float rounding (float32 targets included); answers of two
# different targets differ by O(1) relative to their scale.
PROBE_RTOL = 1e-5
_PROBE_SEED = 0x61746E6C6162  # "atnlab": fixed forever, the stored answers depend on it


def probe_queries(count: int, d: int, tokens: int = PROBE_TOKENS) -> np.ndarray:
    """The fixed probe sequences (count, tokens, d) every journal of width d is checked with."""
    return np.random.default_rng(_PROBE_SEED).standard_normal((count, tokens, d))


def describe_noise(noise) -> str:
    """A stable description of a noise model (dataclass reprs; else the type's qualified name)."""
    if noise is None:
        return "none"
    text = repr(noise)
    if " at 0x" in text:  # a plain function or object: its address changes from run to run
        return (
            f"{type(noise).__module__}.{getattr(noise, '__qualname__', type(noise).__qualname__)}"
        )
    return text


def binding_record(d: int, journal_id: str | None, noise, probe_answers: np.ndarray) -> dict:
    return {
        "d": d,
        "journal_id": journal_id,
        "noise": describe_noise(noise),
        "probe_tokens": PROBE_TOKENS,
        "probes": [float(a) for a in probe_answers],
    }


def check_identity(stored: dict, path, d: int, journal_id: str | None, noise) -> None:
    """Raise JournalMismatch if the stored binding names another width, identity or noise model."""
    problems = []
    if stored.get("d") != d:
        problems.append(
            f"it was recorded for tokens of width d = {stored.get('d')}, this oracle's are d = {d}"
        )
    if stored.get("journal_id") != journal_id:
        problems.append(
            f"it was recorded with journal_id = {stored.get('journal_id')!r}, this oracle has "
            f"journal_id = {journal_id!r}"
        )
    if stored.get("noise") != describe_noise(noise):
        problems.append(
            f"its answers were seen through the noise model {stored.get('noise')}, this oracle "
            f"applies {describe_noise(noise)}"
        )
    if problems:
        raise JournalMismatch(
            f"the journal {path} belongs to another target: {'; '.join(problems)}. Replaying it "
            f"would hand this target's learner another target's answers. Use a new journal= "
            f"file for this target, or open this one with the oracle it was recorded for."
        )


def stored_probes(stored: dict, path) -> tuple[np.ndarray, int]:
    """The stored probe answers and probe length, or a JournalError if the record is malformed."""
    try:
        answers = np.asarray(stored.get("probes", []), dtype=np.float64).reshape(-1)
        tokens = int(stored.get("probe_tokens", PROBE_TOKENS))
    except (TypeError, ValueError):
        raise JournalError(
            f"{path}: its target binding is malformed; the file was altered. Move it away "
            f"to start a fresh journal."
        ) from None
    if tokens < 1 or not np.all(np.isfinite(answers)):
        raise JournalError(
            f"{path}: its target binding is malformed; the file was altered. Move it away "
            f"to start a fresh journal."
        )
    return answers, tokens


def check_probes(path, expected: np.ndarray, got: np.ndarray) -> None:
    """Raise JournalMismatch unless the re-asked probe answers agree with the stored ones."""
    scale = max(float(np.max(np.abs(expected))), float(np.max(np.abs(got))), 1e-300)
    worst = float(np.max(np.abs(got - expected)))
    if worst > PROBE_RTOL * scale:
        raise JournalMismatch(
            f"the journal {path} was recorded for another target: re-asked, its {expected.size} fixed probe "
            f"queries were answered {np.array2string(got, precision=6)} instead of "
            f"{np.array2string(expected, precision=6)} (largest difference {worst:.3g}). Use a new journal= "
            f"file for this target. If the target itself answers with random noise (a service with noise "
            f"defenses), bind the journal by name instead: journal_probes=0, journal_id='...'."
        )


def open_journal(
    journal, d: int | None, journal_id: str | None, noise, probes: int
) -> tuple[QueryJournal | None, bool]:
    """The journal an Oracle uses and whether it opened it (and so closes it).

    The checks that cost no query (the binding's d, name and noise) run here, at once; the probe
    answers are checked on the first query.
    """
    if journal is None:
        return None, False
    if probes == 0 and journal_id is None:
        raise ValueError(
            "a journal must be bound to its target: pass journal_id='<a name for the target>', "
            "or keep journal_probes > 0 so that probe answers identify it"
        )
    owns = not isinstance(journal, QueryJournal)
    opened = QueryJournal(journal) if owns else journal
    if d is not None:
        try:
            stored = opened.binding()
            if stored is not None:
                check_identity(stored, opened.path, d, journal_id, noise)
        except JournalError:
            if owns:
                opened.close()
            raise
    return opened, owns
