"""Step 1, telemetry: request id in and out, metrics, and one structured access-log line per call.

The access-log line carries request id, method, status, duration,
organization_id, namespace_id, key_id and peer identity (and the trace id when
tracing is on, added by the log formatter); never the key, never internal_id. What
rules in dry run would have refused (calls/dry_run.py) is counted here, and written in
the access line's `dry_run`.
The span itself is opened and closed by the chain (interceptors/chain.py)
around every step, so a refusal is traced too. Spans and the
`rpc.server.call.duration` metric follow the OpenTelemetry RPC semantic
conventions (docs/operations.md names the version): `rpc.system.name`, the
fully-qualified `rpc.method`, `rpc.status_code` as the status name, and
`error.type` for the codes a server counts as its own errors.
"""

from __future__ import annotations

import logging
import os
import re
import time

import grpc

from calls.state import CallState
from interceptors.access_log import AccessRecord
from interceptors.metrics import Metrics

__all__ = [
    "REQUEST_ID_HEADER",
    "SERVER_ERRORS",
    "TRACEPARENT_HEADER",
    "Telemetry",
    "peer_attributes",
]

REQUEST_ID_HEADER = "x-request-id"
# W3C trace context: a caller that sends it is part of a trace (tracestate, baggage go with it)
TRACEPARENT_HEADER = "traceparent"
# a SERVER span or call is an error (`error.type`) only for these codes (gRPC conventions)
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_AUTH_FAILURES = frozenset({grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED})


class _RequestIds:
    """96 random bits per id, from the OS in 4 KiB draws (one syscall per 341 ids, not
    one per call); unpredictable, and a forked worker starts with a fresh pool."""

    _SIZE = 12

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._pool, self._at = b"", 0

    def next(self) -> str:
        at = self._at
        if at + self._SIZE > len(self._pool):
            self._pool, at = os.urandom(4096), 0
        self._at = at + self._SIZE
        return self._pool[at : at + self._SIZE].hex()


_fresh_ids = _RequestIds()


def peer_attributes(peer: str) -> dict[str, str | int]:
    """`network.peer.address` and `.port` from grpc's peer string (`ipv4:10.1.2.3:5555`,
    `ipv6:[::1]:5555`, `unix:/path`); nothing for a form it does not know."""
    scheme, _, rest = peer.partition(":")
    if scheme == "unix":
        return {"network.peer.address": rest}
    if scheme not in ("ipv4", "ipv6"):
        return {}
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        return {}
    return {
        "network.peer.address": host.strip("[]"),
        "network.peer.port": int(port),
    }


class Telemetry:
    def __init__(self, *, access_log: logging.Logger, metrics: Metrics | None = None) -> None:
        self._log = access_log
        self._metrics = metrics

    @staticmethod
    def request_id(metadata: dict[str, str]) -> str:
        """The caller's `x-request-id` if it is sane, else a fresh one."""
        given = metadata.get(REQUEST_ID_HEADER)
        if given is not None and _REQUEST_ID_RE.match(given):
            return given
        return _fresh_ids.next()

    def finish(self, call: CallState, duration_s: float) -> None:
        if self._metrics is not None:
            self._metrics.observe_call(
                call.method, call.code.name, duration_s, error=call.code in SERVER_ERRORS
            )
            if call.code in _AUTH_FAILURES:
                self._metrics.auth_failure(call.method, call.code.name)
            for denial in call.dry_run:
                self._metrics.dry_run_denial(call.method, denial.rule, denial.reason)
        if self._log.isEnabledFor(logging.INFO):
            self._log.handle(AccessRecord(self._log.name, time.time(), call, duration_s))
