"""The outcome of a call, from its status and ErrorInfo reason (docs/limits.md#usage)."""

from __future__ import annotations

from storage.core.errors import STATUS_OF, Reason
from storage.core.outcomes import Outcome, outcome_of

EXPECTED = {
    Reason.API_KEY_INVALID: Outcome.UNAUTHENTICATED,
    Reason.PERMISSION_DENIED_LEVEL: Outcome.PERMISSION_DENIED,
    Reason.NAMESPACE_NOT_ALLOWED: Outcome.PERMISSION_DENIED,
    Reason.KEY_SCOPE_INSUFFICIENT: Outcome.PERMISSION_DENIED,
    Reason.PEER_NOT_ALLOWED: Outcome.PERMISSION_DENIED,
    Reason.FORWARDED_IDENTITY_UNTRUSTED: Outcome.PERMISSION_DENIED,
    Reason.METHOD_NOT_DECLARED: Outcome.PERMISSION_DENIED,
    Reason.NAMESPACE_MISSING: Outcome.MALFORMED,
    Reason.METADATA_INVALID: Outcome.MALFORMED,
    Reason.REQUEST_MALFORMED: Outcome.MALFORMED,
    Reason.PAGE_TOKEN_INVALID: Outcome.MALFORMED,
    Reason.BACKUP_FILE_INVALID: Outcome.MALFORMED,
    Reason.FIELD_INVALID: Outcome.MALFORMED,
    Reason.NAMESPACE_NOT_FOUND: Outcome.NOT_FOUND,
    Reason.RESOURCE_NOT_FOUND: Outcome.OTHER,
    Reason.RESOURCE_ALREADY_EXISTS: Outcome.OTHER,
    Reason.CONCURRENT_CHANGE: Outcome.OTHER,
    Reason.PRECONDITION_FAILED: Outcome.OTHER,
    Reason.RATE_LIMITED: Outcome.RATE_LIMITED,
    Reason.CREDITS_EXHAUSTED: Outcome.CREDITS_EXHAUSTED,
    Reason.SERVER_BUSY: Outcome.OTHER,
    Reason.TIME_LIMIT_EXCEEDED: Outcome.OTHER,
    Reason.STORE_UNAVAILABLE: Outcome.UNAVAILABLE,
    Reason.INTERNAL_ERROR: Outcome.OTHER,
}


def test_every_reason_has_its_outcome() -> None:
    """A new reason must be placed in the table (and in docs/limits.md's)."""
    assert set(EXPECTED) == set(Reason)
    for reason, outcome in EXPECTED.items():
        assert outcome_of(STATUS_OF[reason], reason) is outcome, reason


def test_statuses_without_a_reason() -> None:
    """A status meshgate's error mapping did not set (the call finished, or grpc ended it)."""
    assert outcome_of("OK", "") is Outcome.OK
    assert outcome_of("RESOURCE_EXHAUSTED", "") is Outcome.OTHER  # e.g. grpc's own message limit
    assert outcome_of("NOT_FOUND", "") is Outcome.OTHER
    assert outcome_of("CANCELLED", "") is Outcome.OTHER
    assert outcome_of("DEADLINE_EXCEEDED", "") is Outcome.OTHER
