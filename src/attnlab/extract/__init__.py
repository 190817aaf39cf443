"""Learning targets from queries. Every extractor takes an Oracle and returns an Extraction."""

from attnlab.extract.result import Extraction, measure_fidelity, relative_error

__all__ = ["Extraction", "measure_fidelity", "relative_error"]
