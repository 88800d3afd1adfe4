"""Request messages are decoded after admission, seen from the attacker's side.

Every call here is written by hand over HTTP/2 (tests/support/wire.py), so the body and
the headers are exactly what an attacker with a client certificate can send: bodies that
do not decode, strings that are not UTF-8, a filter nested 50 levels deep, header values
that are not UTF-8.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import unquote

import grpc
import pytest
from meshgate.v1 import document_service_pb2

from server.app import RunningServer
from tests.support.pki import Pki
from tests.support.tenants import Tenant
from tests.support.waiting import eventually
from tests.support.wire import raw_http2_call

GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
GET_DOC = "/meshgate.v1.DocumentService/GetDocument"
LIST_DOCS = "/meshgate.v1.DocumentService/ListDocuments"
HEALTH = "/grpc.health.v1.Health/Check"
# field 1, length-delimited, announces 5 bytes and carries 2: the wire format is corrupt
CORRUPT = b"\x0a\x05ab"
MALFORMED = "request message is malformed"


def code_of(answer: dict[bytes, bytes]) -> grpc.StatusCode:
    value = int(answer[b"grpc-status"])
    return next(code for code in grpc.StatusCode if code.value[0] == value)


def message_of(answer: dict[bytes, bytes]) -> str:
    return unquote(answer.get(b"grpc-message", b"").decode())


def bearer(secret: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {secret}".encode())]


def malformed_count(server: RunningServer, method: str, part: str = "message") -> float:
    value = server.components.metrics.registry.get_sample_value(
        "meshgate_malformed_requests_total",
        {"rpc_method": method.removeprefix("/"), "part": part},
    )
    return value or 0.0


@pytest.fixture
def server_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record the server process logs at INFO and above during the test."""
    caplog.set_level(logging.INFO)
    caplog.clear()
    yield caplog


def tracebacks(log: pytest.LogCaptureFixture) -> list[str]:
    """Records that carry a traceback, or grpc's own complaints about a call."""
    return [
        f"{r.name}: {r.getMessage()[:80]}"
        for r in log.records
        if r.exc_info is not None or r.exc_text or r.name.startswith("grpc")
    ]


async def access_line(log: pytest.LogCaptureFixture, request_id: str) -> logging.LogRecord:
    """The call's one access line (written once the refusal went out, so waited for)."""

    def lines() -> list[logging.LogRecord]:
        return [
            r
            for r in log.records
            if r.name == "meshgate.access" and getattr(r, "request_id", None) == request_id
        ]

    async def written() -> bool:
        return bool(lines())

    await eventually(written, timeout_s=5)
    assert len(lines()) == 1, f"one access line for {request_id}, found {len(lines())}"
    return lines()[0]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def nested_filter(levels: int) -> bytes:
    """A ListDocumentsRequest whose filter is {"a": {"a": ... {"a": "x"} ...}}, `levels`
    Structs deep, written by hand (the protobuf library refuses to build it)."""
    value = _field(3, b"x")  # Value.string_value
    for _ in range(levels):
        entry = _field(1, b"a") + _field(2, value)  # map entry: key, Value
        struct = _field(1, entry)  # Struct.fields
        value = _field(5, struct)  # Value.struct_value
    return _field(3, struct)  # ListDocumentsRequest.filter


async def test_a_caller_without_a_key_never_makes_the_server_parse_a_body(
    server: RunningServer, pki: Pki, server_log: pytest.LogCaptureFixture
) -> None:
    """A body that could not be decoded is refused for the missing key: it was never read."""
    before = malformed_count(server, GET_ORG)
    answer = await raw_http2_call(server.port, pki, GET_ORG, [], body=CORRUPT)
    assert code_of(answer) is grpc.StatusCode.UNAUTHENTICATED
    assert message_of(answer) == "missing or invalid API key"
    assert answer.get(b"x-request-id")
    assert malformed_count(server, GET_ORG) == before  # not decoded, so not found malformed
    assert tracebacks(server_log) == []


async def test_a_bad_key_with_a_corrupt_body_is_unauthenticated(
    server: RunningServer, pki: Pki, server_log: pytest.LogCaptureFixture
) -> None:
    answer = await raw_http2_call(
        server.port, pki, GET_ORG, bearer("mg_dev_" + "a" * 40 + "_AAAAAA"), body=CORRUPT
    )
    assert code_of(answer) is grpc.StatusCode.UNAUTHENTICATED
    assert tracebacks(server_log) == []


async def test_a_key_without_the_permission_never_makes_the_server_parse_a_body(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    """READ key, DeleteDocument: refused by the authorization step before any decoding."""
    ns = await tenant.namespace()
    reader = await tenant.key()
    answer = await raw_http2_call(
        server.port,
        pki,
        "/meshgate.v1.DocumentService/DeleteDocument",
        [*bearer(reader.secret), (b"x-namespace", ns.name.encode())],
        body=CORRUPT,
    )
    assert code_of(answer) is grpc.StatusCode.PERMISSION_DENIED


async def test_a_corrupt_body_is_invalid_argument_with_request_id_access_line_and_metric(
    server: RunningServer, pki: Pki, tenant: Tenant, server_log: pytest.LogCaptureFixture
) -> None:
    before = malformed_count(server, GET_ORG)
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [*bearer(tenant.admin), (b"x-request-id", b"corrupt-body-1")],
        body=CORRUPT,
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer) == MALFORMED
    assert answer.get(b"x-request-id") == b"corrupt-body-1"
    line = await access_line(server_log, "corrupt-body-1")
    assert line.status == "INVALID_ARGUMENT"  # type: ignore[attr-defined]
    assert line.organization_id == tenant.organization_id  # type: ignore[attr-defined]
    assert malformed_count(server, GET_ORG) == before + 1
    assert tracebacks(server_log) == []


async def test_a_string_field_that_is_not_utf8_is_malformed(
    server: RunningServer, pki: Pki, tenant: Tenant, server_log: pytest.LogCaptureFixture
) -> None:
    ns = await tenant.namespace()
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_DOC,
        [*bearer(tenant.admin), (b"x-namespace", ns.name.encode())],
        body=b"\x0a\x02\xff\xfe",  # document_id: two bytes that are not UTF-8
    )
    assert (code_of(answer), message_of(answer)) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
    assert answer.get(b"x-request-id")
    assert tracebacks(server_log) == []


async def test_a_filter_nested_50_levels_is_malformed_not_unknown(
    server: RunningServer, pki: Pki, tenant: Tenant, server_log: pytest.LogCaptureFixture
) -> None:
    ns = await tenant.namespace()
    answer = await raw_http2_call(
        server.port,
        pki,
        LIST_DOCS,
        [*bearer(tenant.admin), (b"x-namespace", ns.name.encode())],
        body=nested_filter(50),
    )
    assert (code_of(answer), message_of(answer)) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
    assert tracebacks(server_log) == []


async def test_a_filter_nested_a_few_levels_still_decodes(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    """The hand-written filter is well-formed: 3 levels decode, and the filter parser (not
    the decoder) answers, naming the filter."""
    ns = await tenant.namespace()
    answer = await raw_http2_call(
        server.port,
        pki,
        LIST_DOCS,
        [*bearer(tenant.admin), (b"x-namespace", ns.name.encode())],
        body=nested_filter(3),
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer).startswith("filter:")


async def test_repeated_malformed_bodies_are_counted_not_logged_one_by_one(
    server: RunningServer, pki: Pki, tenant: Tenant, server_log: pytest.LogCaptureFixture
) -> None:
    before = malformed_count(server, GET_ORG)
    for _ in range(20):
        answer = await raw_http2_call(server.port, pki, GET_ORG, bearer(tenant.admin), body=CORRUPT)
        assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert malformed_count(server, GET_ORG) == before + 20
    warnings = [r for r in server_log.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1, [r.getMessage() for r in warnings]
    assert tracebacks(server_log) == []


async def test_a_public_method_decodes_after_admission_too(
    server: RunningServer, pki: Pki, server_log: pytest.LogCaptureFixture
) -> None:
    """Health needs no key: a corrupt body reaches the decoder and is INVALID_ARGUMENT."""
    answer = await raw_http2_call(server.port, pki, HEALTH, [], body=CORRUPT)
    assert (code_of(answer), message_of(answer)) == (grpc.StatusCode.INVALID_ARGUMENT, MALFORMED)
    assert malformed_count(server, HEALTH) >= 1
    assert tracebacks(server_log) == []


async def test_a_header_value_that_is_not_utf8_is_invalid_argument_without_traceback(
    server: RunningServer, pki: Pki, tenant: Tenant, server_log: pytest.LogCaptureFixture
) -> None:
    """grpc itself logs such a value (with a traceback) before any interceptor runs; the
    server keeps that out of its log, counts it and refuses the call, naming the header."""
    before = malformed_count(server, GET_DOC, "metadata")
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_DOC,
        [*bearer(tenant.admin), (b"x-namespace", b"ns-\xff\xfe"), (b"x-request-id", b"bad-utf8")],
        body=document_service_pb2.GetDocumentRequest(document_id="d").SerializeToString(),
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer) == "the x-namespace header is not valid UTF-8"
    assert answer.get(b"x-request-id")
    assert malformed_count(server, GET_DOC, "metadata") == before + 1
    assert tracebacks(server_log) == []
    # the same bytes as a valid name's would still be refused, not read as Latin-1
    assert not [r for r in server_log.records if "Invalid encoding" in r.getMessage()]


async def test_a_valid_non_ascii_header_value_is_still_read(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    """UTF-8 that is not ASCII is a valid value: here an unknown namespace, NOT_FOUND."""
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_DOC,
        [*bearer(tenant.admin), (b"x-namespace", "ns-é".encode())],
        body=document_service_pb2.GetDocumentRequest(document_id="d").SerializeToString(),
    )
    assert code_of(answer) is grpc.StatusCode.NOT_FOUND
