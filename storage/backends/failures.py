"""What an error means to a caller: the status name of typed errors and of store failures.

A typed error (storage/core/errors.py) carries its own status; a driver error
that means "a store is unreachable" is UNAVAILABLE (the client may retry);
anything else is INTERNAL. The request path (`interceptors/errors.py`) and the
task worker (`server/workers/tasks.py`) both ask `status_name`.
"""

from __future__ import annotations

from pymongo.errors import AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from storage.core.errors import MeshgateError

__all__ = ["backend_unavailable", "status_name"]

_UNAVAILABLE = (
    ConnectionFailure,
    AutoReconnect,
    NetworkTimeout,
    ExecutionTimeout,
    RedisConnectionError,
    RedisTimeoutError,
    TimeoutError,
)


def backend_unavailable(exc: BaseException) -> bool:
    """True for a driver error that means a backing store cannot be reached right now."""
    return isinstance(exc, _UNAVAILABLE)


def status_name(exc: BaseException) -> str:
    """The `google.rpc.Code` name for `exc`: a typed error's own code, UNAVAILABLE for a
    store that cannot be reached, else INTERNAL."""
    if isinstance(exc, MeshgateError) and exc.code is not None:
        return exc.code
    return "UNAVAILABLE" if backend_unavailable(exc) else "INTERNAL"
