"""The one error -> status table: typed errors, unreachable stores, everything else."""

from __future__ import annotations

import pytest
from pymongo.errors import AutoReconnect, ExecutionTimeout, OperationFailure
from qdrant_client.http.exceptions import ResponseHandlingException
from redis.exceptions import ConnectionError as RedisConnectionError

from storage.backends.failures import backend_unavailable, failed_store, status_name
from storage.backends.scoped import ScopeViolationError
from storage.core import errors


@pytest.mark.parametrize(
    ("exc", "name"),
    [
        (errors.InvalidArgumentError("x"), "INVALID_ARGUMENT"),
        (errors.UnauthenticatedError(), "UNAUTHENTICATED"),
        (errors.PermissionDeniedError("x"), "PERMISSION_DENIED"),
        (errors.NotFoundError("x"), "NOT_FOUND"),
        (errors.AlreadyExistsError("x"), "ALREADY_EXISTS"),
        (errors.FailedPreconditionError("x"), "FAILED_PRECONDITION"),
        (errors.ResourceExhaustedError("x", retry_after_s=1.0), "RESOURCE_EXHAUSTED"),
        (errors.UnavailableError("x"), "UNAVAILABLE"),
        (ScopeViolationError("x"), "INVALID_ARGUMENT"),  # a subclass keeps its parent's code
        (errors.MeshgateError("x"), "INTERNAL"),  # no code of its own: not a client error
        (AutoReconnect("down"), "UNAVAILABLE"),
        (RedisConnectionError("down"), "UNAVAILABLE"),
        (TimeoutError(), "UNAVAILABLE"),
        (OperationFailure("bad"), "INTERNAL"),
        (RuntimeError("bug"), "INTERNAL"),
    ],
)
def test_status_name(exc: BaseException, name: str) -> None:
    assert status_name(exc) == name


def test_only_driver_failures_are_unavailable() -> None:
    assert backend_unavailable(AutoReconnect("down"))
    assert not backend_unavailable(errors.UnavailableError("x"))
    assert not backend_unavailable(ValueError())


@pytest.mark.parametrize(
    ("exc", "store"),
    [
        (AutoReconnect("connection refused"), "mongodb"),
        (ExecutionTimeout("slow query"), None),  # the server's own time limit: not down
        (RedisConnectionError("down"), "redis"),
        (ResponseHandlingException(ConnectionError("refused")), "qdrant"),
        (TimeoutError(), None),  # no store named
        (errors.UnavailableError("x"), None),
    ],
)
def test_failed_store(exc: BaseException, store: str | None) -> None:
    assert failed_store(exc) == store
