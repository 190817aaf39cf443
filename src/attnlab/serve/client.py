"""Kept for old imports: the client and wire format live in attnlab.oracle.http (no FastAPI needed)."""

from attnlab.oracle.http import (  # noqa: F401
    API_KEY_HEADER,
    IDEMPOTENCY_HEADER,
    REPLAYED_HEADER,
    HttpTarget,
    NotAnAttnlabService,
    ServiceBudgetExhausted,
)

__all__ = ["HttpTarget", "NotAnAttnlabService", "ServiceBudgetExhausted"]
