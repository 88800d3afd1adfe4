"""The one error -> status table: typed errors, unreachable stores, everything else."""

from __future__ import annotations

import httpx
import pytest
from pymongo.errors import (
    AutoReconnect,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    _OperationCancelled,
)
from qdrant_client.http.exceptions import ResponseHandlingException
from redis.exceptions import ConnectionError as RedisConnectionError

from storage.backends.failures import (
    backend_unavailable,
    failed_store,
    heartbeat_proves_unreachable,
    proves_unreachable,
    status_name,
)
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


def raised_from(error: AutoReconnect, cause: BaseException) -> AutoReconnect:
    """A driver error as PyMongo raises it: from what the socket said."""
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("exc", "proves"),
    [
        (
            raised_from(
                AutoReconnect("127.0.0.1:27017: [Errno 111] Connection refused"),
                ConnectionRefusedError(111, "Connection refused"),
            ),
            True,
        ),
        (raised_from(AutoReconnect("connection closed"), OSError("connection closed")), True),
        (raised_from(AutoReconnect("reset"), ConnectionResetError(104, "reset")), True),
        (ResponseHandlingException(httpx.ConnectError("refused")), True),
        # what a busy host causes too, while the store is up
        (NetworkTimeout("timed out"), False),
        (_OperationCancelled("operation cancelled"), False),  # its heartbeat ran late
        (ServerSelectionTimeoutError("no servers found yet"), False),
        # the driver's own verdict once its pool was cleared: no socket said anything
        (
            raised_from(
                AutoReconnect("127.0.0.1:27017: connection pool paused"),
                AutoReconnect("connection pool paused"),
            ),
            False,
        ),
        (raised_from(NetworkTimeout("timed out"), TimeoutError("timed out")), False),
        (ResponseHandlingException(httpx.ReadTimeout("slow")), False),
        (TimeoutError(), False),
        (ExecutionTimeout("slow query"), False),
        (RuntimeError("bug"), False),
    ],
)
def test_only_refused_or_lost_connections_prove_a_store_unreachable(
    exc: BaseException, proves: bool
) -> None:
    assert proves_unreachable(exc) is proves


@pytest.mark.parametrize(
    ("error", "proves"),
    [
        # as PyMongo's monitor reports them: stripped of their cause
        (AutoReconnect("127.0.0.1:27017: [Errno 111] Connect call failed"), True),
        (AutoReconnect("127.0.0.1:27017: connection closed"), True),
        (NetworkTimeout("127.0.0.1:27017: timed out"), False),
        (_OperationCancelled("operation cancelled"), False),
    ],
)
def test_a_heartbeat_proves_a_store_unreachable_when_its_socket_failed(
    error: BaseException, proves: bool
) -> None:
    assert heartbeat_proves_unreachable(error) is proves
