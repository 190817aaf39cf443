"""Learning targets from queries. Every extractor takes an Oracle and returns an Extraction."""

from attnlab.extract.result import Extraction, measure_fidelity, relative_error
from attnlab.extract.single_head import single_head

__all__ = ["Extraction", "measure_fidelity", "relative_error", "single_head"]
