"""Small helpers shared by the test modules (imported as `from helpers import ...`)."""

from __future__ import annotations

import json
from typing import Any


def last_json(output) -> Any:
    """The JSON object on the last non-empty line of a CLI's output.

    Accepts the text itself, or a typer/click Result (its stdout, so stderr spinners and
    warnings never get in the way).
    """
    text = output if isinstance(output, str) else output.stdout
    lines = text.strip().splitlines()
    if not lines:
        raise AssertionError("the command printed nothing; expected a JSON object on the last line")
    return json.loads(lines[-1])


def succeeded_json(result) -> Any:
    """`last_json` of a typer/click Result that must have exited 0 (else its output is shown)."""
    assert result.exit_code == 0, result.output
    return last_json(result)
