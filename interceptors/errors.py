"""Step 2, errors: typed domain errors become status codes here, and only here.

Which status an error means is decided by `storage.backends.failures.status_name`
(from the code each typed error declares), the same lookup the task worker uses;
this step turns that name into a grpc code and a client-safe message.

Unknown exceptions become INTERNAL with a generic message and the request id;
their text and traceback go to the server log, never to the client. Every
UNAVAILABLE message ends with the request id, typed or not. A store failure is also
reported to `on_store_failure` (the circuit breakers).

Every refusal carries the details of Google's AIP-193 in a `google.rpc.Status`
(`grpc-status-details-bin` trailer): `google.rpc.ErrorInfo` with the one domain
`meshgate` and the error's stable reason (docs/api.md lists them), and
`google.rpc.RequestInfo` with the request id; then, as the error knows them,
`google.rpc.BadRequest` (the request field of an INVALID_ARGUMENT),
`google.rpc.QuotaFailure` (the limit of a RESOURCE_EXHAUSTED) and
`google.rpc.RetryInfo` with a `retry-after` trailer (whole seconds, at least 1) when
the caller may retry after a known delay. The details hold only what the message says
and the reason's fixed metadata: never internal_id, never which part of a key was wrong
(every bad key is one reason, one message).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from interceptors.metrics import Metrics
from storage.backends.failures import status_name
from storage.core.errors import (
    InvalidArgumentError,
    MeshgateError,
    Reason,
    ResourceExhaustedError,
)

__all__ = ["ERROR_DOMAIN", "ErrorMapper", "Refusal"]

# google.rpc.ErrorInfo.domain of every refusal: one fixed value for meshgate
ERROR_DOMAIN = "meshgate"

# status names (storage/core/errors.py, storage/backends/failures.py) -> grpc codes
_CODES: dict[str, grpc.StatusCode] = {code.name: code for code in grpc.StatusCode}

Trailers = tuple[tuple[str, str | bytes], ...]


@dataclass(frozen=True, slots=True)
class Refusal:
    code: grpc.StatusCode
    message: str
    trailing_metadata: Trailers = ()
    # the ErrorInfo reason, also sent in ext_authz denials (interceptors/sidecar/check.py)
    reason: str = Reason.INTERNAL_ERROR


def _varint(value: int) -> bytes:
    if value < 0x80:  # every tag here, and most lengths
        return bytes((value,))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


# Any.type_url (field 1) of each detail type, written once
_TYPE_URLS = {
    name: _field(1, f"type.googleapis.com/{name}".encode())
    for name in (
        "google.rpc.ErrorInfo",
        "google.rpc.RequestInfo",
        "google.rpc.BadRequest",
        "google.rpc.QuotaFailure",
        "google.rpc.RetryInfo",
    )
}


def _detail(type_name: str, value: bytes) -> bytes:
    """One `details` entry of a google.rpc.Status (field 3): a google.protobuf.Any holding
    `value`, a serialized message of `type_name` (Any.value is field 2)."""
    return _field(3, _TYPE_URLS[type_name] + _field(2, value))


# Status code, message and ErrorInfo of the refusals that repeat (a bad key, a missing
# namespace...), written once: such a refusal costs a few concatenations, even under a
# flood. Messages that carry a delay or a request id are not kept; the rest are bounded.
_HEADS: dict[tuple[int, str, str, tuple[tuple[str, str], ...]], bytes] = {}
_MAX_HEADS = 512


def _head(code: int, message: str, reason: str, metadata: Mapping[str, str], keep: bool) -> bytes:
    """code (field 1, a varint), message (field 2) and the ErrorInfo detail."""
    key = (code, message, reason, tuple(sorted(metadata.items())))
    head = _HEADS.get(key)
    if head is None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata)
        head = (
            b"\x08"
            + _varint(code)
            + _field(2, message.encode())
            + _detail("google.rpc.ErrorInfo", info.SerializeToString(deterministic=True))
        )
        if keep and len(_HEADS) < _MAX_HEADS:
            _HEADS[key] = head
    return head


def _details_trailers(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: Reason,
    request_id: str,
    exc: BaseException,
) -> Trailers:
    """`grpc-status-details-bin` (and `retry-after`) for a refusal of `exc`: a
    google.rpc.Status (code = 1, message = 2, details = 3), its details in this order:
    ErrorInfo, RequestInfo, then BadRequest, QuotaFailure and RetryInfo as they apply."""
    metadata: Mapping[str, str] = exc.metadata if isinstance(exc, MeshgateError) else {}
    retry_after_s = exc.retry_after_s if isinstance(exc, MeshgateError) else None
    keep = retry_after_s is None and code is not grpc.StatusCode.UNAVAILABLE
    parts = [
        _head(code.value[0], message, reason, metadata, keep),
        _detail("google.rpc.RequestInfo", _field(1, request_id.encode())),
    ]
    if isinstance(exc, InvalidArgumentError) and exc.field:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=exc.field, description=message, reason=reason
        )
        bad_request = error_details_pb2.BadRequest(field_violations=[violation])
        parts.append(_detail("google.rpc.BadRequest", bad_request.SerializeToString()))
    if isinstance(exc, ResourceExhaustedError) and exc.quota is not None:
        quota = error_details_pb2.QuotaFailure.Violation(
            subject=exc.quota.subject, description=exc.quota.description
        )
        failure = error_details_pb2.QuotaFailure(violations=[quota])
        parts.append(_detail("google.rpc.QuotaFailure", failure.SerializeToString()))
    trailers: list[tuple[str, str | bytes]] = []
    if retry_after_s is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after_s * 1e9))
        retry = error_details_pb2.RetryInfo(retry_delay=delay)
        parts.append(_detail("google.rpc.RetryInfo", retry.SerializeToString()))
        trailers.append(("retry-after", str(max(1, math.ceil(retry_after_s)))))
    trailers.append(("grpc-status-details-bin", b"".join(parts)))
    return tuple(trailers)


class ErrorMapper:
    def __init__(
        self,
        *,
        logger: logging.Logger,
        on_store_failure: Callable[[BaseException], None] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._logger = logger
        self._on_store_failure = on_store_failure
        self._metrics = metrics
        self._counted: dict[tuple[str, str], Any] = {}  # (code, reason) -> its counter

    def refusal_for(self, exc: BaseException, *, request_id: str) -> Refusal:
        code = _CODES[status_name(exc)]
        if isinstance(exc, MeshgateError) and exc.code is not None:
            message = exc.message
            if code is grpc.StatusCode.UNAVAILABLE:
                message = f"{message} (request id {request_id})"
            return self._refusal(code, message, exc.reason, request_id, exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            self._logger.warning(
                "backing store unavailable: %s",
                type(exc).__name__,
                extra={"request_id": request_id},
            )
            if self._on_store_failure is not None:
                self._on_store_failure(exc)
            message = f"a backing store is unavailable; retry later (request id {request_id})"
            return self._refusal(code, message, Reason.STORE_UNAVAILABLE, request_id, exc)
        self._logger.error("unhandled error", exc_info=exc, extra={"request_id": request_id})
        message = f"internal error (request id {request_id})"
        return self._refusal(code, message, Reason.INTERNAL_ERROR, request_id, exc)

    def _refusal(
        self,
        code: grpc.StatusCode,
        message: str,
        reason: Reason,
        request_id: str,
        exc: BaseException,
    ) -> Refusal:
        if self._metrics is not None:
            counter = self._counted.get((code.name, reason))
            if counter is None:
                counter = self._counted[(code.name, reason)] = self._metrics.refusals.labels(
                    code.name, reason
                )
            counter.inc()
        trailers = _details_trailers(code, message, reason=reason, request_id=request_id, exc=exc)
        return Refusal(code, message, trailers, reason)
