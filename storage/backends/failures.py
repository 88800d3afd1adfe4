"""What an error means to a caller: the status name of typed errors and of store failures.

A typed error (storage/core/errors.py) carries its own status; a driver error
that means "a store is unreachable" is UNAVAILABLE (the client may retry);
anything else is INTERNAL. The request path (`interceptors/errors.py`) and the
task worker (`server/workers/tasks.py`) both ask `status_name`.
"""

from __future__ import annotations

from pymongo.errors import AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout
from qdrant_client.http.exceptions import ResponseHandlingException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.core.errors import MeshgateError

__all__ = ["backend_unavailable", "failed_store", "status_name"]

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


def status_name(exc: BaseException) -> str:
    """The `google.rpc.Code` name for `exc`: a typed error's own code, UNAVAILABLE for a
    store that cannot be reached, else INTERNAL."""
    if isinstance(exc, MeshgateError) and exc.code is not None:
        return exc.code
    return "UNAVAILABLE" if backend_unavailable(exc) else "INTERNAL"
