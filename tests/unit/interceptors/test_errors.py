"""The errors step: status names become grpc codes, and client-safe messages."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from pymongo.errors import AutoReconnect

from interceptors.errors import ErrorMapper
from storage.core import errors

MAPPER = ErrorMapper(logger=logging.getLogger("test.errors"))
TYPED = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.MeshgateError) and cls.code is not None
]


def test_every_typed_error_is_covered() -> None:
    assert len(TYPED) == 8


@pytest.mark.parametrize("cls", TYPED, ids=lambda cls: cls.__name__)
def test_typed_errors_keep_their_message_and_code(cls: type[errors.MeshgateError]) -> None:
    exc = cls("refused") if cls is not errors.UnauthenticatedError else cls()
    refusal = MAPPER.refusal_for(exc, request_id="req-1")
    assert refusal.code.name == cls.code
    if cls is errors.UnavailableError:  # every UNAVAILABLE names the request id
        assert refusal.message == f"{exc.message} (request id req-1)"
    else:
        assert refusal.message == exc.message
    assert refusal.trailing_metadata == ()


def test_credit_accounting_unavailable_names_the_request_id() -> None:
    exc = errors.UnavailableError("credit accounting is unavailable; retry later")
    refusal = MAPPER.refusal_for(exc, request_id="req-9")
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert refusal.message == "credit accounting is unavailable; retry later (request id req-9)"


def test_unavailable_with_a_known_delay_carries_retry_info() -> None:
    exc = errors.UnavailableError("a store is down; retry in 0.20s", retry_after_s=0.2)
    refusal = MAPPER.refusal_for(exc, request_id="req-8")
    trailers = dict(refusal.trailing_metadata)
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert trailers["retry-after"] == "1"  # whole seconds, at least one
    raw = trailers["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    info = error_details_pb2.RetryInfo()
    assert status_pb2.Status.FromString(raw).details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 200_000_000


def test_store_failures_are_reported_and_typed_errors_are_not() -> None:
    seen: list[BaseException] = []
    mapper = ErrorMapper(logger=logging.getLogger("test.errors"), on_store_failure=seen.append)
    down = AutoReconnect("connection refused")
    mapper.refusal_for(down, request_id="r")
    mapper.refusal_for(errors.UnavailableError("credits"), request_id="r")
    mapper.refusal_for(RuntimeError("bug"), request_id="r")
    assert seen == [down]


def test_resource_exhausted_carries_retry_info() -> None:
    exc = errors.ResourceExhaustedError("slow down", retry_after_s=1.5)
    refusal = MAPPER.refusal_for(exc, request_id="req-1")
    trailers = dict(refusal.trailing_metadata)
    assert refusal.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers["retry-after"] == "2"
    raw = trailers["grpc-status-details-bin"]
    assert isinstance(raw, bytes)
    status = status_pb2.Status.FromString(raw)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert status.message == "slow down"
    info = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(info)
    assert info.retry_delay.ToNanoseconds() == 1_500_000_000


def test_unreachable_store_is_unavailable_without_its_text() -> None:
    refusal = MAPPER.refusal_for(AutoReconnect("mongo at 10.0.0.1 down"), request_id="req-2")
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert "10.0.0.1" not in refusal.message and "req-2" in refusal.message


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), errors.MeshgateError("plain")])
def test_anything_else_is_internal_and_generic(exc: Exception) -> None:
    refusal = MAPPER.refusal_for(exc, request_id="req-3")
    assert refusal.code is grpc.StatusCode.INTERNAL
    assert refusal.message == "internal error (request id req-3)"
