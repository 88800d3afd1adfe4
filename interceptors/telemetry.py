"""Step 1, telemetry: request id in and out, and one structured access-log line per call.

The line carries request id, method, status, duration, organization_id,
namespace_id, key_id and peer identity; never the key, never internal_id.
"""

from __future__ import annotations

import logging
import re
import secrets

from interceptors.context import CallState

__all__ = ["REQUEST_ID_HEADER", "Telemetry"]

REQUEST_ID_HEADER = "x-request-id"
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class Telemetry:
    def __init__(self, *, access_log: logging.Logger) -> None:
        self._log = access_log

    @staticmethod
    def request_id(metadata: dict[str, str]) -> str:
        """The caller's `x-request-id` if it is sane, else a fresh one."""
        given = metadata.get(REQUEST_ID_HEADER)
        if given is not None and _REQUEST_ID_RE.match(given):
            return given
        return secrets.token_hex(12)

    def finish(self, call: CallState, duration_s: float) -> None:
        if not self._log.isEnabledFor(logging.INFO):
            return
        principal = call.principal
        self._log.info(
            "call",
            extra={
                "request_id": call.request_id,
                "method": call.method,
                "status": call.code.name,
                "duration_ms": round(duration_s * 1000, 3),
                "organization_id": principal.organization.organization_id if principal else None,
                "namespace_id": call.namespace.namespace_id if call.namespace else None,
                "key_id": call.key.key_id if call.key else None,
                "peer": call.peer_identity,
                "peer_address": call.peer_address,
            },
        )
