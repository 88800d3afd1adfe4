"""Which lower-layer errors mean "a store is unreachable" (the client may retry)."""

from __future__ import annotations

from pymongo.errors import AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

__all__ = ["backend_unavailable"]

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
