"""Step 2, errors: typed domain errors become status codes here, and only here.

Which status an error means is decided by `storage.backends.failures.status_name`
(from the code each typed error declares), the same lookup the task worker uses;
this step turns that name into a grpc code and a client-safe message.

Unknown exceptions become INTERNAL with a generic message and the request id;
their text and traceback go to the server log, never to the client. Every
UNAVAILABLE message ends with the request id, typed or not. An error that
knows when to retry (RESOURCE_EXHAUSTED, and UNAVAILABLE while a store is
known to be down) carries `google.rpc.RetryInfo` in the status details and a
`retry-after` trailer (whole seconds, at least 1). A store failure is also
reported to `on_store_failure` (the circuit breakers).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from storage.backends.failures import status_name
from storage.core.errors import MeshgateError

__all__ = ["ErrorMapper", "Refusal"]

# status names (storage/core/errors.py, storage/backends/failures.py) -> grpc codes
_CODES: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    trailing_metadata: tuple[tuple[str, str | bytes], ...] = ()


def _retry_trailers(
    code: grpc.StatusCode, message: str, retry_after_s: float
) -> tuple[tuple[str, str | bytes], ...]:
    delay = duration_pb2.Duration()
    delay.FromNanoseconds(int(retry_after_s * 1e9))
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return (
        ("retry-after", str(max(1, math.ceil(retry_after_s)))),
        ("grpc-status-details-bin", status.SerializeToString()),
    )


class ErrorMapper:
    def __init__(
        self,
        *,
        logger: logging.Logger,
        on_store_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._logger = logger
        self._on_store_failure = on_store_failure

    def refusal_for(self, exc: BaseException, *, request_id: str) -> Refusal:
        code = _CODES[status_name(exc)]
        if isinstance(exc, MeshgateError) and exc.code is not None:
            message = exc.message
            if code is grpc.StatusCode.UNAVAILABLE:
                message = f"{message} (request id {request_id})"
            if exc.retry_after_s is not None:
                return Refusal(code, message, _retry_trailers(code, message, exc.retry_after_s))
            return Refusal(code, message)
        if code is grpc.StatusCode.UNAVAILABLE:
            self._logger.warning(
                "backing store unavailable: %s",
                type(exc).__name__,
                extra={"request_id": request_id},
            )
            if self._on_store_failure is not None:
                self._on_store_failure(exc)
            return Refusal(
                code, f"a backing store is unavailable; retry later (request id {request_id})"
            )
        self._logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return Refusal(code, f"internal error (request id {request_id})")
