"""Typed domain errors.

`storage/` and `services/` raise these and never import grpc; the errors step
of the request path (`interceptors/errors.py`) maps them to status codes in one
place. Messages are client-visible: they must never carry secrets, internal
ids or exception text from lower layers.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
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

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(MeshgateError):
    """The request is malformed: a bad field, header, token or size."""


class UnauthenticatedError(MeshgateError):
    """No usable credentials. One message for every cause: no oracle."""

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message)


class PermissionDeniedError(MeshgateError):
    """Known caller, not allowed."""


class NotFoundError(MeshgateError):
    """Unknown, or belonging to someone else (never say which)."""


class AlreadyExistsError(MeshgateError):
    """A unique name is taken."""


class FailedPreconditionError(MeshgateError):
    """The resource is not in a state that allows the call."""


class ResourceExhaustedError(MeshgateError):
    """A rate or credit limit is exhausted."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnavailableError(MeshgateError):
    """A backing store is unreachable; the client may retry."""
