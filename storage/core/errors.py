"""Typed domain errors, each with its status code.

`storage/` and `services/` raise these and never import grpc. Each class names
its canonical status (`code`, a `google.rpc.Code` name): this is the one
error -> status table. `storage.backends.failures.status_name` reads it (and
adds "a store cannot be reached: UNAVAILABLE, anything else: INTERNAL") for the
request path (`interceptors/errors.py`, which turns names into grpc codes) and
for the task worker, which records the name in a failed task.
Messages are client-visible: they must never carry secrets, internal ids or
exception text from lower layers.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FailedPreconditionError",
    "InvalidArgumentError",
    "MeshgateError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthenticatedError",
    "UnavailableError",
]


class MeshgateError(Exception):
    """Base of every error whose message may be shown to the caller."""

    # the google.rpc.Code name callers see; None: not a client error (INTERNAL, generic text)
    code: ClassVar[str | None] = None
    # when the caller may try again (seconds), if the error knows
    retry_after_s: float | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(MeshgateError):
    """The request is malformed: a bad field, header, token or size."""

    code = "INVALID_ARGUMENT"


class UnauthenticatedError(MeshgateError):
    """No usable credentials. One message for every cause: no oracle."""

    code = "UNAUTHENTICATED"

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message)


class PermissionDeniedError(MeshgateError):
    """Known caller, not allowed."""

    code = "PERMISSION_DENIED"


class NotFoundError(MeshgateError):
    """Unknown, or belonging to someone else (never say which)."""

    code = "NOT_FOUND"


class AlreadyExistsError(MeshgateError):
    """A unique name is taken."""

    code = "ALREADY_EXISTS"


class FailedPreconditionError(MeshgateError):
    """The resource is not in a state that allows the call."""

    code = "FAILED_PRECONDITION"


class DeadlineExceededError(MeshgateError):
    """The call ran past a time bound the server sets (a whole import or export, or a
    stream on which nothing moved): what it held is released."""

    code = "DEADLINE_EXCEEDED"


class ResourceExhaustedError(MeshgateError):
    """A rate or credit limit is exhausted, or a per-server capacity is taken."""

    code = "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(MeshgateError):
    """A backing store is unreachable; the client may retry (after `retry_after_s`, when
    known). The message is followed by the request id, as for an unexpected outage."""

    code = "UNAVAILABLE"

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
