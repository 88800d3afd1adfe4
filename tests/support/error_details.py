"""The AIP-193 details of a refusal, decoded as a client decodes them.

A client reads the `grpc-status-details-bin` trailer: a `google.rpc.Status` whose code and
message match the call's, holding `google.protobuf.Any` details. Each detail type appears
at most once; one of an unknown type is an error here (the server sends only these).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

__all__ = ["ErrorDetails", "details_of"]

_KINDS: dict[str, type[Message]] = {
    cls.DESCRIPTOR.full_name: cls
    for cls in (
        error_details_pb2.ErrorInfo,
        error_details_pb2.RequestInfo,
        error_details_pb2.BadRequest,
        error_details_pb2.QuotaFailure,
        error_details_pb2.RetryInfo,
    )
}


@dataclass
class ErrorDetails:
    status: status_pb2.Status
    error_info: error_details_pb2.ErrorInfo
    request_info: error_details_pb2.RequestInfo
    bad_request: error_details_pb2.BadRequest | None = None
    quota_failure: error_details_pb2.QuotaFailure | None = None
    retry_info: error_details_pb2.RetryInfo | None = None

    @property
    def reason(self) -> str:
        return self.error_info.reason

    @property
    def fields(self) -> list[str]:
        """The request fields BadRequest names (none without a BadRequest)."""
        if self.bad_request is None:
            return []
        return [v.field for v in self.bad_request.field_violations]


def details_of(trailers: Iterable[tuple[str, str | bytes]]) -> ErrorDetails:
    """The details of a refusal's trailing metadata (AssertionError when absent or odd)."""
    raw = dict(trailers).get("grpc-status-details-bin")
    assert isinstance(raw, bytes), "no grpc-status-details-bin trailer"
    status = status_pb2.Status.FromString(raw)
    found: dict[str, Message] = {}
    for detail in status.details:
        name = detail.TypeName()
        assert name in _KINDS, f"unexpected detail {name}"
        assert name not in found, f"{name} twice"
        message = _KINDS[name]()
        assert detail.Unpack(message)
        found[name] = message
    error_info = found.pop("google.rpc.ErrorInfo", None)
    request_info = found.pop("google.rpc.RequestInfo", None)
    assert isinstance(error_info, error_details_pb2.ErrorInfo), "no ErrorInfo"
    assert isinstance(request_info, error_details_pb2.RequestInfo), "no RequestInfo"
    details = ErrorDetails(status=status, error_info=error_info, request_info=request_info)
    for message in found.values():
        if isinstance(message, error_details_pb2.BadRequest):
            details.bad_request = message
        elif isinstance(message, error_details_pb2.QuotaFailure):
            details.quota_failure = message
        elif isinstance(message, error_details_pb2.RetryInfo):
            details.retry_info = message
    return details
