"""One answer per security header, seen from the attacker's side.

A gRPC client merges or refuses repeated headers, so these calls are written by hand over
HTTP/2: a second `authorization` (another organization's key first), a second
`x-namespace`, `x-request-id` or forwarding header. Each is INVALID_ARGUMENT naming the
header, whichever value comes first.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

import grpc
import pytest
from meshgate.v1 import namespace_service_pb2

from certs.dev_pki import CLIENT_ID
from server.app import RunningServer
from tests.support.pki import Pki
from tests.support.tenants import MakeTenant, Tenant
from tests.support.waiting import eventually
from tests.support.wire import raw_http2_call

GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
GET_NS = "/meshgate.v1.NamespaceService/GetNamespace"


def code_of(answer: dict[bytes, bytes]) -> grpc.StatusCode:
    value = int(answer[b"grpc-status"])
    return next(code for code in grpc.StatusCode if code.value[0] == value)


def message_of(answer: dict[bytes, bytes]) -> str:
    return unquote(answer.get(b"grpc-message", b"").decode())


def bearer(secret: str) -> tuple[bytes, bytes]:
    return (b"authorization", f"Bearer {secret}".encode())


async def test_two_authorization_headers_are_refused_whichever_comes_first(
    server: RunningServer, pki: Pki, make_tenant: MakeTenant
) -> None:
    """Another organization's key first: without the check, the call acted as that one."""
    mine, theirs = await make_tenant(), await make_tenant()
    for headers in ([bearer(theirs.admin), bearer(mine.admin)], [bearer(mine.admin)] * 2):
        answer = await raw_http2_call(server.port, pki, GET_ORG, headers)
        assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
        assert message_of(answer) == "the authorization header may appear only once"
        assert answer.get(b"x-request-id")
        assert b"organization" not in answer.get(b"grpc-message", b"")


async def test_two_namespace_headers_are_refused(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    first, second = await tenant.namespace(), await tenant.namespace()
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_NS,
        [
            bearer(tenant.admin),
            (b"x-namespace", first.name.encode()),
            (b"x-namespace", second.name.encode()),
        ],
        body=namespace_service_pb2.GetNamespaceRequest().SerializeToString(),
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer) == "the x-namespace header may appear only once"


async def test_two_request_ids_are_refused_with_a_fresh_one(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [bearer(tenant.admin), (b"x-request-id", b"mine-1"), (b"x-request-id", b"mine-2")],
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer) == "the x-request-id header may appear only once"
    assert answer.get(b"x-request-id") not in (None, b"mine-1", b"mine-2")


@pytest.mark.parametrize(
    ("header", "values"),
    [
        (
            b"x-forwarded-client-cert",
            (b"URI=spiffe://meshgate.local/client/a", b"URI=spiffe://meshgate.local/client/b"),
        ),
        (b"l5d-client-id", (b"a.ns.serviceaccount.identity.linkerd", b"b.ns")),
    ],
)
async def test_two_forwarding_headers_are_refused_even_from_the_trusted_proxy(
    server: RunningServer, pki: Pki, tenant: Tenant, header: bytes, values: tuple[bytes, bytes]
) -> None:
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [bearer(tenant.admin), *((header, value) for value in values)],
        identity="proxy",
    )
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer) == f"the {header.decode()} header may appear only once"


async def test_one_forwarding_header_from_the_trusted_proxy_still_works(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [bearer(tenant.admin), (b"l5d-client-id", b"web.ns.serviceaccount.identity.linkerd")],
        identity="proxy",
    )
    assert code_of(answer) is grpc.StatusCode.OK


async def test_other_headers_may_repeat(server: RunningServer, pki: Pki, tenant: Tenant) -> None:
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [bearer(tenant.admin), (b"x-custom", b"1"), (b"x-custom", b"2")],
    )
    assert code_of(answer) is grpc.StatusCode.OK


async def test_a_forged_forwarding_header_is_logged_and_counted_under_the_tls_identity(
    server: RunningServer, pki: Pki, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """The client certificate is not a trusted proxy: PERMISSION_DENIED, counted under the
    method, and the access line names the TLS identity that sent the forged header (a
    metric label never does: peers are unbounded)."""

    def refused() -> float:
        value = server.components.metrics.registry.get_sample_value(
            "meshgate_auth_failures_total",
            {"rpc_method": GET_ORG.removeprefix("/"), "code": "PERMISSION_DENIED"},
        )
        return value or 0.0

    caplog.set_level(logging.INFO, logger="meshgate.access")
    before = refused()
    answer = await raw_http2_call(
        server.port,
        pki,
        GET_ORG,
        [
            bearer(tenant.admin),
            (b"x-forwarded-client-cert", b"URI=spiffe://meshgate.local/internal/dev"),
            (b"x-request-id", b"forged-xfcc-1"),
        ],
    )
    assert code_of(answer) is grpc.StatusCode.PERMISSION_DENIED

    def lines() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "meshgate.access" and getattr(r, "request_id", None) == "forged-xfcc-1"
        ]

    async def logged() -> bool:  # written once the refusal went out
        return bool(lines())

    await eventually(logged, timeout_s=5)
    assert [getattr(r, "peer", None) for r in lines()] == [CLIENT_ID]
    assert refused() == before + 1


async def test_the_number_of_headers_is_bounded(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    """Every header counts at least its name's byte towards the chain's 8 KiB, so an admitted
    call carries at most 8,192 of them. (grpc's own `grpc.max_metadata_size` refuses far
    more only at random: 100,000 one-byte headers reach the chain some of the time.)"""

    async def call_with(count: int) -> dict[bytes, bytes]:
        headers = [bearer(tenant.admin), *[(b"x", b"")] * count]
        return await raw_http2_call(server.port, pki, GET_ORG, headers)

    assert code_of(await call_with(8000)) is grpc.StatusCode.OK
    answer = await call_with(8200)
    assert code_of(answer) is grpc.StatusCode.INVALID_ARGUMENT
    assert message_of(answer).startswith("request metadata is too large")
