"""What an error means to a caller: the status name of typed errors and of store failures.

A typed error (storage/core/errors.py) carries its own status; a driver error
that means "a store is unreachable" is UNAVAILABLE (the client may retry);
anything else is INTERNAL. The request path (`interceptors/errors.py`) and the
task worker (`server/workers/tasks.py`) both ask `status_name`.
"""

from __future__ import annotations

from httpx import TimeoutException as HttpTimeout
from httpx import TransportError as HttpTransportError
from pymongo.errors import (
    AutoReconnect,
    ConnectionFailure,
    ExecutionTimeout,
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    _OperationCancelled,
)
from qdrant_client.http.exceptions import ResponseHandlingException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.core.errors import MeshgateError

__all__ = [
    "backend_unavailable",
    "failed_store",
    "heartbeat_proves_unreachable",
    "proves_unreachable",
    "status_name",
]

# the store each driver failure names: the connection is gone, refused, or the server
# cannot be selected (not a slow query: ExecutionTimeout is the server's own time limit)
_STORE_DOWN: tuple[tuple[str, tuple[type[BaseException], ...]], ...] = (
    ("mongodb", (ConnectionFailure,)),  # AutoReconnect, NetworkTimeout, ServerSelectionTimeout…
    ("redis", (RedisConnectionError, RedisTimeoutError)),
    ("qdrant", (ResponseHandlingException,)),  # its REST client could not get an answer
)
_UNAVAILABLE = (
    ConnectionFailure,
    AutoReconnect,
    NetworkTimeout,
    ExecutionTimeout,
    RedisConnectionError,
    RedisTimeoutError,
    ResponseHandlingException,
    TimeoutError,
)


def backend_unavailable(exc: BaseException) -> bool:
    """True for a driver error that means a backing store cannot be reached right now."""
    return isinstance(exc, _UNAVAILABLE)


def failed_store(exc: BaseException) -> str | None:
    """The store `exc` says is unreachable ("mongodb", "redis", "qdrant"), if it says so."""
    for name, kinds in _STORE_DOWN:
        if isinstance(exc, kinds):
            return name
    return None


# store failures that a busy host causes too, while the store is up: the driver's clock ran
# out (on an event loop that ran late, a reply already received can still time out), or the
# driver cancelled the call because its own heartbeat ran out of time
_INCONCLUSIVE: tuple[type[BaseException], ...] = (
    NetworkTimeout,
    ServerSelectionTimeoutError,
    WaitQueueTimeoutError,
    _OperationCancelled,
    TimeoutError,
    RedisTimeoutError,
    HttpTimeout,  # Qdrant's HTTP client
)


def proves_unreachable(exc: BaseException | None) -> bool:
    """Whether a store failure shows by itself that the store cannot be reached: the
    operating system refused, reset or closed the connection (which a store that is up does
    not cause), as opposed to a timeout, a cancellation or the driver's own verdict (a
    paused pool), which a busy host causes too (storage/backends/breaker.py treats those
    as hints)."""
    for _ in range(4):  # the error, and what it was raised from (a chain is short)
        if isinstance(exc, ResponseHandlingException):  # Qdrant: the HTTP client's own error
            exc = exc.source
        if exc is None or isinstance(exc, _INCONCLUSIVE):
            return False
        if not isinstance(exc, ConnectionFailure):
            return isinstance(exc, (OSError, RedisConnectionError, HttpTransportError))
        # PyMongo raises its errors from what the socket said (`raise … from error`);
        # "connection pool paused" and the like are raised from nothing of the kind
        exc = exc.__cause__
    return False


def heartbeat_proves_unreachable(error: BaseException) -> bool:
    """The same question for a failed heartbeat of PyMongo's monitor, whose error the driver
    strips of its cause (PYTHON-2433): the monitor's own connection is never paused, so an
    AutoReconnect from it that is neither a timeout nor a cancellation came from the socket
    (refused, reset or closed)."""
    return isinstance(error, AutoReconnect) and not isinstance(error, _INCONCLUSIVE)


def status_name(exc: BaseException) -> str:
    """The `google.rpc.Code` name for `exc`: a typed error's own code, UNAVAILABLE for a
    store that cannot be reached, else INTERNAL."""
    if isinstance(exc, MeshgateError) and exc.code is not None:
        return exc.code
    return "UNAVAILABLE" if backend_unavailable(exc) else "INTERNAL"
