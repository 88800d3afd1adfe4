"""Typed domain errors, each with its status code and its stable reason.

`storage/` and `services/` raise these and never import grpc. Each class names
its canonical status (`code`, a `google.rpc.Code` name): this is the one
error -> status table. `storage.backends.failures.status_name` reads it (and
adds "a store cannot be reached: UNAVAILABLE, anything else: INTERNAL") for the
request path (`interceptors/errors.py`, which turns names into grpc codes) and
for the task worker, which records the name in a failed task.

Each error also carries a `Reason` (AIP-193's `google.rpc.ErrorInfo.reason`): what a
program branches on, from the closed set below, each reason belonging to one status
(`STATUS_OF`; docs/api.md lists them). A class gives its general reason; a raise site
that knows better names a narrower one. An INVALID_ARGUMENT may name the request
`field` it is about (a `google.rpc.BadRequest` field violation), a RESOURCE_EXHAUSTED
the `quota` that ran out (`google.rpc.QuotaFailure`).
Messages are client-visible: they must never carry secrets, internal ids or
exception text from lower layers; nor must a reason's metadata.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

__all__ = [
    "STATUS_OF",
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MeshgateError",
    "NotFoundError",
    "PermissionDeniedError",
    "Quota",
    "Reason",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]


class Reason(StrEnum):
    """Stable reasons of refusals (never renamed: clients branch on them)."""

    API_KEY_INVALID = "API_KEY_INVALID"
    PERMISSION_DENIED_LEVEL = "PERMISSION_DENIED_LEVEL"
    NAMESPACE_NOT_ALLOWED = "NAMESPACE_NOT_ALLOWED"
    KEY_SCOPE_INSUFFICIENT = "KEY_SCOPE_INSUFFICIENT"
    PEER_NOT_ALLOWED = "PEER_NOT_ALLOWED"
    FORWARDED_IDENTITY_UNTRUSTED = "FORWARDED_IDENTITY_UNTRUSTED"
    METHOD_NOT_DECLARED = "METHOD_NOT_DECLARED"
    NAMESPACE_MISSING = "NAMESPACE_MISSING"
    METADATA_INVALID = "METADATA_INVALID"
    REQUEST_MALFORMED = "REQUEST_MALFORMED"
    PAGE_TOKEN_INVALID = "PAGE_TOKEN_INVALID"  # noqa: S105 (a reason, not a secret)
    BACKUP_FILE_INVALID = "BACKUP_FILE_INVALID"
    FIELD_INVALID = "FIELD_INVALID"
    NAMESPACE_NOT_FOUND = "NAMESPACE_NOT_FOUND"
    RESOURCE_NOT_FOUND = "RESOURCE_NOT_FOUND"
    RESOURCE_ALREADY_EXISTS = "RESOURCE_ALREADY_EXISTS"
    CONCURRENT_CHANGE = "CONCURRENT_CHANGE"
    PRECONDITION_FAILED = "PRECONDITION_FAILED"
    RATE_LIMITED = "RATE_LIMITED"
    CREDITS_EXHAUSTED = "CREDITS_EXHAUSTED"
    SERVER_BUSY = "SERVER_BUSY"
    TIME_LIMIT_EXCEEDED = "TIME_LIMIT_EXCEEDED"
    STORE_UNAVAILABLE = "STORE_UNAVAILABLE"
    INTERNAL_ERROR = "INTERNAL_ERROR"


# each reason's status (a google.rpc.Code name): one status per reason
STATUS_OF: Mapping[Reason, str] = {
    Reason.API_KEY_INVALID: "UNAUTHENTICATED",
    Reason.PERMISSION_DENIED_LEVEL: "PERMISSION_DENIED",
    Reason.NAMESPACE_NOT_ALLOWED: "PERMISSION_DENIED",
    Reason.KEY_SCOPE_INSUFFICIENT: "PERMISSION_DENIED",
    Reason.PEER_NOT_ALLOWED: "PERMISSION_DENIED",
    Reason.FORWARDED_IDENTITY_UNTRUSTED: "PERMISSION_DENIED",
    Reason.METHOD_NOT_DECLARED: "PERMISSION_DENIED",
    Reason.NAMESPACE_MISSING: "INVALID_ARGUMENT",
    Reason.METADATA_INVALID: "INVALID_ARGUMENT",
    Reason.REQUEST_MALFORMED: "INVALID_ARGUMENT",
    Reason.PAGE_TOKEN_INVALID: "INVALID_ARGUMENT",
    Reason.BACKUP_FILE_INVALID: "INVALID_ARGUMENT",
    Reason.FIELD_INVALID: "INVALID_ARGUMENT",
    Reason.NAMESPACE_NOT_FOUND: "NOT_FOUND",
    Reason.RESOURCE_NOT_FOUND: "NOT_FOUND",
    Reason.RESOURCE_ALREADY_EXISTS: "ALREADY_EXISTS",
    Reason.CONCURRENT_CHANGE: "FAILED_PRECONDITION",
    Reason.PRECONDITION_FAILED: "FAILED_PRECONDITION",
    Reason.RATE_LIMITED: "RESOURCE_EXHAUSTED",
    Reason.CREDITS_EXHAUSTED: "RESOURCE_EXHAUSTED",
    Reason.SERVER_BUSY: "RESOURCE_EXHAUSTED",
    Reason.TIME_LIMIT_EXCEEDED: "DEADLINE_EXCEEDED",
    Reason.STORE_UNAVAILABLE: "UNAVAILABLE",
    Reason.INTERNAL_ERROR: "INTERNAL",
}


@dataclass(frozen=True, slots=True)
class Quota:
    """The limit a RESOURCE_EXHAUSTED ran into (`google.rpc.QuotaFailure.Violation`):
    `subject` names it in a fixed form (`rate_class:data`, `credits:2026-12`)."""

    subject: str
    description: str


class MeshgateError(Exception):
    """Base of every error whose message may be shown to the caller."""

    # the google.rpc.Code name callers see; None: not a client error (INTERNAL, generic text)
    code: ClassVar[str | None] = None
    # the class's general reason; a raise site may name a narrower one of the same status
    default_reason: ClassVar[Reason] = Reason.INTERNAL_ERROR
    # when the caller may try again (seconds), if the error knows
    retry_after_s: float | None = None

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if self.code is not None and STATUS_OF[self.reason] != self.code:
            raise ValueError(f"reason {self.reason} is not a {self.code} reason")
        # ErrorInfo metadata: values from fixed sets, or what the caller sent itself
        self.metadata: Mapping[str, str] = metadata or {}


class InvalidArgumentError(MeshgateError):
    """The request is malformed: a bad field, header, token or size. `field` names the
    request field (a path such as `requests[2].document.body`) when the raise site knows it."""

    code = "INVALID_ARGUMENT"
    default_reason = Reason.FIELD_INVALID

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        reason: Reason | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.field = field


class UnauthenticatedError(MeshgateError):
    """No usable credentials. One message and one reason for every cause: no oracle."""

    code = "UNAUTHENTICATED"
    default_reason = Reason.API_KEY_INVALID

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message)


class PermissionDeniedError(MeshgateError):
    """Known caller, not allowed."""

    code = "PERMISSION_DENIED"
    # a rule of the key's scope (environment, allow-list, binding, reach) unless named
    default_reason = Reason.KEY_SCOPE_INSUFFICIENT


class NotFoundError(MeshgateError):
    """Unknown, or belonging to someone else (never say which)."""

    code = "NOT_FOUND"
    default_reason = Reason.RESOURCE_NOT_FOUND


class AlreadyExistsError(MeshgateError):
    """A unique name is taken."""

    code = "ALREADY_EXISTS"
    default_reason = Reason.RESOURCE_ALREADY_EXISTS


class FailedPreconditionError(MeshgateError):
    """The resource is not in a state that allows the call."""

    code = "FAILED_PRECONDITION"
    default_reason = Reason.PRECONDITION_FAILED


class DeadlineExceededError(MeshgateError):
    """The call ran past a time bound the server sets (a whole import or export, or a
    stream on which nothing moved): what it held is released."""

    code = "DEADLINE_EXCEEDED"
    default_reason = Reason.TIME_LIMIT_EXCEEDED


class ResourceExhaustedError(MeshgateError):
    """A rate or credit limit is exhausted (`quota` says which), or a per-server capacity
    is taken."""

    code = "RESOURCE_EXHAUSTED"
    default_reason = Reason.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float | None = None,
        reason: Reason | None = None,
        quota: Quota | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s
        self.quota = quota


class UnavailableError(MeshgateError):
    """A backing store is unreachable; the client may retry (after `retry_after_s`, when
    known). The message is followed by the request id, as for an unexpected outage."""

    code = "UNAVAILABLE"
    default_reason = Reason.STORE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
