"""`attnlab reproduce`: every claim of the two papers that attnlab builds, measured and reported."""

from attnlab.report.claims import CLAIMS, ClaimResult, Context, Measurement, claim
from attnlab.report.reproduce import reproduce, select

__all__ = ["CLAIMS", "ClaimResult", "Context", "Measurement", "claim", "reproduce", "select"]
