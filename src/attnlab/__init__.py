"""attnlab: the theory of attention, executable.

Learning attention heads from black-box queries (Shah, Hahn, Bhattamishra, Kanade 2026) and what
attention can and cannot represent (Sanford, Hsu, Telgarsky 2023).
"""

from attnlab.errors import (
    AttnlabError,
    BudgetExhausted,
    ExtractionError,
    OracleError,
    QueryShapeError,
)
from attnlab.oracle import Oracle, QueryJournal

__version__ = "0.1.0"

__all__ = [
    "AttnlabError",
    "BudgetExhausted",
    "ExtractionError",
    "Oracle",
    "OracleError",
    "QueryJournal",
    "QueryShapeError",
    "__version__",
]
