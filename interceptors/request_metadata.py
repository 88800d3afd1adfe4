"""The call's request headers, read once before any step: size, repeated security headers,
and values that are not UTF-8.

A header the request path decides on (`authorization`, `x-namespace`, `x-request-id`, the
forwarding headers) may appear once: a second value would let a proxy in front and
meshgate disagree about who is calling and where. All metadata together is bounded
(8 KiB), so unauthenticated input costs bounded work.

Values that are not UTF-8 never reach the chain as such: grpc decodes every header value
before any interceptor runs (`_decode` in grpc's `grpc_string.pyx.pxi`, called for each
value by `RPCState.invocation_metadata()` in `_handle_rpc`), and for one that is not UTF-8
it logs `Invalid encoding on <bytes>` with a traceback on the `grpc._cython.cygrpc`
logger, then passes the value on decoded as Latin-1. That happens in the call's own task,
before `intercept_service`. `UndecodableHeaders` is a logging filter on that logger: it
takes those records out of the log (a traceback per call would be a log flood) and notes
the raw value in the call's context, where `read_metadata` finds it and refuses the
header by name.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from contextvars import ContextVar
from typing import Any

from interceptors.namespace import NAMESPACE_HEADER
from interceptors.peer import L5D, XFCC
from interceptors.telemetry import REQUEST_ID_HEADER
from storage.core.errors import InvalidArgumentError, Reason

__all__ = [
    "GRPC_DECODING_LOGGER",
    "MAX_METADATA_BYTES",
    "SINGLE_VALUED_HEADERS",
    "UndecodableHeaderError",
    "UndecodableHeaders",
    "read_metadata",
]

MAX_METADATA_BYTES = 8 * 1024
SINGLE_VALUED_HEADERS = frozenset({"authorization", NAMESPACE_HEADER, REQUEST_ID_HEADER, XFCC, L5D})
# where grpc (1.85) logs a header value that is not UTF-8, and the message it logs
GRPC_DECODING_LOGGER = "grpc._cython.cygrpc"
_GRPC_DECODING_MESSAGE = "Invalid encoding on %s"

# the raw values grpc could not decode in this call (set in the call's task, see above)
_undecodable: ContextVar[tuple[bytes, ...]] = ContextVar("meshgate_undecodable", default=())


class UndecodableHeaderError(InvalidArgumentError):
    """A header value that is not UTF-8 (counted as malformed input)."""

    default_reason = Reason.METADATA_INVALID


class UndecodableHeaders(logging.Filter):
    """Drops grpc's `Invalid encoding` records and remembers the value for the call."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != _GRPC_DECODING_MESSAGE:
            return True
        args = record.args
        raw = args[0] if isinstance(args, tuple) and args else None
        if isinstance(raw, bytes):
            _undecodable.set((*_undecodable.get(), raw))
        return False

    def install(self) -> None:
        """On grpc's logger and on the root logger (older grpc releases log it there)."""
        for name in (GRPC_DECODING_LOGGER, None):
            logger = logging.getLogger(name)
            if not any(isinstance(f, UndecodableHeaders) for f in logger.filters):
                logger.addFilter(self)


def read_metadata(raw: Iterable[tuple[str, Any]]) -> dict[str, str]:
    """The text headers, each once. INVALID_ARGUMENT for metadata over the size limit, a
    security header that appears twice, or a value grpc could not decode as UTF-8."""
    out: dict[str, str] = {}
    size = 0
    repeated: str | None = None
    for key, value in raw:
        size += len(key) + len(value)
        if key in out:
            if repeated is None and key in SINGLE_VALUED_HEADERS:
                repeated = key
        elif isinstance(value, str):  # `-bin` headers are bytes, and never read here
            out[key] = value
    if size > MAX_METADATA_BYTES:
        raise InvalidArgumentError(
            f"request metadata is too large ({size} bytes; the limit is {MAX_METADATA_BYTES})",
            reason=Reason.METADATA_INVALID,
        )
    undecodable = _undecodable.get()
    if undecodable:
        _refuse_undecodable(out, undecodable)
    if repeated is not None:
        raise InvalidArgumentError(
            f"the {repeated} header may appear only once",
            reason=Reason.METADATA_INVALID,
            metadata={"header": repeated},
        )
    return out


def _refuse_undecodable(headers: dict[str, str], values: tuple[bytes, ...]) -> None:
    """grpc handed these values on decoded as Latin-1: name the header that holds one."""
    as_received = {value.decode("latin-1") for value in values}
    for key, value in headers.items():
        if value in as_received:
            raise UndecodableHeaderError(
                f"the {key} header is not valid UTF-8",
                metadata={"header": key} if key in SINGLE_VALUED_HEADERS else None,
            )
    raise UndecodableHeaderError("a request header is not valid UTF-8")
