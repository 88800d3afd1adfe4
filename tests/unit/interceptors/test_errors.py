"""The errors step: status names become grpc codes, and client-safe messages."""

from __future__ import annotations

import logging

import grpc
import pytest
from google.rpc import status_pb2
from pymongo.errors import AutoReconnect

from interceptors.errors import ERROR_DOMAIN, ErrorMapper
from interceptors.metrics import Metrics
from storage.core import errors
from storage.core.errors import STATUS_OF, Quota, Reason
from tests.support.error_details import details_of

MAPPER = ErrorMapper(logger=logging.getLogger("test.errors"))
TYPED = [
    cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, errors.MeshgateError) and cls.code is not None
]


def test_every_typed_error_is_covered() -> None:
    assert len(TYPED) == 9


@pytest.mark.parametrize("cls", TYPED, ids=lambda cls: cls.__name__)
def test_typed_errors_keep_their_message_and_code(cls: type[errors.MeshgateError]) -> None:
    exc = cls("refused") if cls is not errors.UnauthenticatedError else cls()
    refusal = MAPPER.refusal_for(exc, request_id="req-1")
    assert refusal.code.name == cls.code
    if cls is errors.UnavailableError:  # every UNAVAILABLE names the request id
        assert refusal.message == f"{exc.message} (request id req-1)"
    else:
        assert refusal.message == exc.message
    details = details_of(refusal.trailing_metadata)
    # the status in the details is the call's own; the reason is the class's general one
    assert (details.status.code, details.status.message) == (refusal.code.value[0], refusal.message)
    assert details.reason == refusal.reason == exc.default_reason
    assert STATUS_OF[exc.default_reason] == cls.code
    assert details.error_info.domain == ERROR_DOMAIN == "meshgate"
    assert details.request_info.request_id == "req-1"
    assert "retry-after" not in dict(refusal.trailing_metadata)
    assert details.bad_request is None and details.quota_failure is None
    assert details.retry_info is None


def test_every_reason_has_one_status_that_grpc_knows() -> None:
    assert set(STATUS_OF) == set(Reason)
    codes = {code.name for code in grpc.StatusCode}
    assert set(STATUS_OF.values()) <= codes
    for reason in Reason:  # AIP-193: UPPER_SNAKE_CASE, at most 63 characters
        assert reason.value == reason.name and len(reason) <= 63


def test_a_reason_of_another_status_is_refused_where_it_is_raised() -> None:
    with pytest.raises(ValueError, match="RATE_LIMITED is not a NOT_FOUND reason"):
        errors.NotFoundError("x", reason=Reason.RATE_LIMITED)


def test_invalid_argument_names_its_field_in_bad_request() -> None:
    exc = errors.InvalidArgumentError("page_size must not be negative", field="page_size")
    details = details_of(MAPPER.refusal_for(exc, request_id="r").trailing_metadata)
    assert details.reason == "FIELD_INVALID"
    assert details.bad_request is not None
    (violation,) = details.bad_request.field_violations
    assert (violation.field, violation.description) == ("page_size", exc.message)


def test_resource_exhausted_names_its_quota_beside_retry_info() -> None:
    exc = errors.ResourceExhaustedError(
        "the organization's credits for this month are used up",
        retry_after_s=30.0,
        reason=Reason.CREDITS_EXHAUSTED,
        quota=Quota(subject="credits:2026-12", description="the month's credits"),
        metadata={"period": "2026-12"},
    )
    refusal = MAPPER.refusal_for(exc, request_id="r")
    details = details_of(refusal.trailing_metadata)
    assert details.reason == refusal.reason == "CREDITS_EXHAUSTED"
    assert dict(details.error_info.metadata) == {"period": "2026-12"}
    assert details.quota_failure is not None and details.retry_info is not None
    assert [v.subject for v in details.quota_failure.violations] == ["credits:2026-12"]
    assert details.retry_info.retry_delay.seconds == 30


def test_refusals_are_counted_by_code_and_reason() -> None:
    metrics = Metrics()
    mapper = ErrorMapper(logger=logging.getLogger("test.errors"), metrics=metrics)
    for _ in range(2):
        mapper.refusal_for(errors.UnauthenticatedError(), request_id="r")
    mapper.refusal_for(RuntimeError("bug"), request_id="r")
    count = metrics.registry.get_sample_value
    assert (
        count("meshgate_refusals_total", {"code": "UNAUTHENTICATED", "reason": "API_KEY_INVALID"})
        == 2
    )
    assert count("meshgate_refusals_total", {"code": "INTERNAL", "reason": "INTERNAL_ERROR"}) == 1


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
    details = details_of(refusal.trailing_metadata)
    assert details.reason == "STORE_UNAVAILABLE" and details.retry_info is not None
    assert details.retry_info.retry_delay.ToNanoseconds() == 200_000_000
    assert details.status.message == refusal.message  # with the request id


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
    details = details_of(refusal.trailing_metadata)
    assert details.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    assert details.status.message == "slow down"
    assert details.reason == "RATE_LIMITED"
    assert details.retry_info is not None
    assert details.retry_info.retry_delay.ToNanoseconds() == 1_500_000_000


def test_unreachable_store_is_unavailable_without_its_text() -> None:
    refusal = MAPPER.refusal_for(AutoReconnect("mongo at 10.0.0.1 down"), request_id="req-2")
    assert refusal.code is grpc.StatusCode.UNAVAILABLE
    assert "10.0.0.1" not in refusal.message and "req-2" in refusal.message
    details = details_of(refusal.trailing_metadata)
    assert details.reason == "STORE_UNAVAILABLE"
    assert b"10.0.0.1" not in details.status.SerializeToString()


@pytest.mark.parametrize("exc", [RuntimeError("secret detail"), errors.MeshgateError("plain")])
def test_anything_else_is_internal_and_generic(exc: Exception) -> None:
    refusal = MAPPER.refusal_for(exc, request_id="req-3")
    assert refusal.code is grpc.StatusCode.INTERNAL
    assert refusal.message == "internal error (request id req-3)"
    details = details_of(refusal.trailing_metadata)
    assert details.reason == "INTERNAL_ERROR" and not details.error_info.metadata
    assert b"detail" not in details.status.SerializeToString()


def test_the_details_are_the_bytes_protobuf_itself_writes() -> None:
    """The Status and its Any wrappers are written by hand (a refusal costs concatenations,
    not message building): protobuf reads them and writes back the very same bytes."""
    exc = errors.ResourceExhaustedError(
        "slow down",
        retry_after_s=0.25,
        reason=Reason.RATE_LIMITED,
        quota=Quota(subject="rate_class:data", description="the data calls' limit"),
        metadata={"rate_class": "data"},
    )
    for refused in (exc, errors.InvalidArgumentError("page_size: é" * 40, field="page_size")):
        raw = dict(MAPPER.refusal_for(refused, request_id="r" * 128).trailing_metadata)[
            "grpc-status-details-bin"
        ]
        assert isinstance(raw, bytes)
        status = status_pb2.Status.FromString(raw)
        assert status.SerializeToString() == raw
        assert [d.type_url.rsplit("/", 1)[1] for d in status.details][:2] == [
            "google.rpc.ErrorInfo",
            "google.rpc.RequestInfo",
        ]
