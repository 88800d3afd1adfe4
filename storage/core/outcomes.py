"""The outcome of a call for usage analytics: one of a fixed set, from its status and reason.

A tenant admin asks "who calls, and what becomes of their calls": a key that is
rate limited, one that lost its permission, one whose namespace is gone, one
whose revoked secret is still being presented. The status code alone mixes
those (RESOURCE_EXHAUSTED is a rate limit or an empty credit balance; NOT_FOUND
is a namespace the key cannot use or a document that does not exist), so the
outcome is read from the status and the `google.rpc.ErrorInfo` reason every
refusal carries (storage/core/errors.py, `Reason`), never from a message.
Statuses outside the table are OTHER; the row's calls by status say which.
"""

from __future__ import annotations

from enum import StrEnum

from storage.core.errors import Reason

__all__ = ["Outcome", "outcome_of"]


class Outcome(StrEnum):
    """Stored in usage documents by name (never renamed: rows outlive versions)."""

    OK = "OK"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    RATE_LIMITED = "RATE_LIMITED"
    CREDITS_EXHAUSTED = "CREDITS_EXHAUSTED"
    MALFORMED = "MALFORMED"
    UNAVAILABLE = "UNAVAILABLE"
    OTHER = "OTHER"


# statuses whose outcome does not depend on the reason
_BY_STATUS = {
    "OK": Outcome.OK,
    "UNAUTHENTICATED": Outcome.UNAUTHENTICATED,
    "PERMISSION_DENIED": Outcome.PERMISSION_DENIED,
    "INVALID_ARGUMENT": Outcome.MALFORMED,
    "UNAVAILABLE": Outcome.UNAVAILABLE,
}
# statuses whose reason decides: any other reason of theirs is OTHER
_BY_REASON = {
    ("NOT_FOUND", Reason.NAMESPACE_NOT_FOUND.value): Outcome.NOT_FOUND,
    ("RESOURCE_EXHAUSTED", Reason.RATE_LIMITED.value): Outcome.RATE_LIMITED,
    ("RESOURCE_EXHAUSTED", Reason.CREDITS_EXHAUSTED.value): Outcome.CREDITS_EXHAUSTED,
}


def outcome_of(status: str, reason: str) -> Outcome:
    """`status` is a google.rpc.Code name (`OK`, `NOT_FOUND`...), `reason` the ErrorInfo
    reason of the refusal ("" when the call was not refused by meshgate's error mapping)."""
    known = _BY_STATUS.get(status)
    if known is not None:
        return known
    return _BY_REASON.get((status, reason), Outcome.OTHER)
