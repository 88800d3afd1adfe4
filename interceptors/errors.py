"""Step 2, errors: typed domain errors become status codes here, and only here.

Unknown exceptions become INTERNAL with a generic message and the request id;
their text and traceback go to the server log, never to the client.
RESOURCE_EXHAUSTED carries `google.rpc.RetryInfo` in the status details and a
`retry-after` trailer (seconds) when the error knows when to retry.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from storage.backends.failures import backend_unavailable
from storage.core.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    MeshgateError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = ["ErrorMapper", "Refusal"]

_CODES: dict[type[MeshgateError], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
}


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
    def __init__(self, *, logger: logging.Logger) -> None:
        self._logger = logger

    def refusal_for(self, exc: BaseException, *, request_id: str) -> Refusal:
        if isinstance(exc, MeshgateError):
            for cls in type(exc).__mro__:
                code = _CODES.get(cls)
                if code is not None:
                    if isinstance(exc, ResourceExhaustedError) and exc.retry_after_s is not None:
                        trailers = _retry_trailers(code, exc.message, exc.retry_after_s)
                        return Refusal(code, exc.message, trailers)
                    return Refusal(code, exc.message)
        if backend_unavailable(exc):
            self._logger.warning(
                "backing store unavailable: %s",
                type(exc).__name__,
                extra={"request_id": request_id},
            )
            return Refusal(
                grpc.StatusCode.UNAVAILABLE,
                f"a backing store is unavailable; retry later (request id {request_id})",
            )
        self._logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return Refusal(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
