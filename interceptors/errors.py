"""Step 2, errors: typed domain errors become status codes here, and only here.

Unknown exceptions become INTERNAL with a generic message and the request id;
their text and traceback go to the server log, never to the client.
"""

from __future__ import annotations

import logging

import grpc

from storage.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    InvalidArgumentError,
    MeshgateError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    backend_unavailable,
)

__all__ = ["ErrorMapper"]

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


class ErrorMapper:
    def __init__(self, *, logger: logging.Logger) -> None:
        self._logger = logger

    def status_for(self, exc: BaseException, *, request_id: str) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, MeshgateError):
            for cls in type(exc).__mro__:
                code = _CODES.get(cls)
                if code is not None:
                    return code, exc.message
        if backend_unavailable(exc):
            self._logger.warning(
                "backing store unavailable: %s",
                type(exc).__name__,
                extra={"request_id": request_id},
            )
            return (
                grpc.StatusCode.UNAVAILABLE,
                f"a backing store is unavailable; retry later (request id {request_id})",
            )
        self._logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        return grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})"
