"""meshgate behind a real nginx (Debian's package, deploy/nginx/meshgate.conf).

nginx ends the client's mTLS, calls meshgate over mTLS with the edge-proxy
certificate (the only identity in this server's MESHGATE_TRUSTED_PROXIES) and
forwards the client's certificate in `x-forwarded-client-cert`. From the
attacker's side: a client that forges the header itself, a plain client asking
for an internal-only method, a client without a certificate.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from urllib.parse import quote

import grpc
import pytest
from meshgate.v1 import (
    identity_service_pb2,
    identity_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
)

from certs.dev_pki import CLIENT_ID, EDGE_PROXY_ID, INTERNAL_ID
from server.app import RunningServer, create_server
from server.backends import Backends
from server.settings import Settings
from tests.support.clients import auth, client_credentials, grpcurl_binary
from tests.support.nginx import Nginx
from tests.support.pki import Pki
from tests.support.tenants import Tenant

RESOLVE = "/meshgate.v1.IdentityService/ResolveOrganization"
XFCC = "x-forwarded-client-cert"


@pytest.fixture(scope="module")
async def behind_nginx(settings: Settings, backends: Backends) -> AsyncIterator[RunningServer]:
    """A server that trusts only the edge proxy's identity to forward client identities."""
    server = await create_server(
        replace(settings, trusted_proxies=frozenset({EDGE_PROXY_ID})), backends
    )
    yield server
    await server.stop(0)


@pytest.fixture(scope="module")
def nginx(
    behind_nginx: RunningServer, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    started = Nginx(
        prefix=tmp_path_factory.mktemp("nginx"), certs=pki.root, upstream_port=behind_nginx.port
    ).start()
    yield started
    started.stop()


def through(nginx: Nginx, pki: Pki, identity: str = "client") -> grpc.aio.Channel:
    return grpc.aio.secure_channel(nginx.target, client_credentials(pki, identity))


def access_lines(caplog: pytest.LogCaptureFixture, request_id: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == "meshgate.access" and getattr(r, "request_id", None) == request_id
    ]


async def test_a_call_through_nginx_is_the_clients(
    nginx: Nginx, pki: Pki, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="meshgate.access")
    ns = await tenant.namespace()
    async with through(nginx, pki) as channel:
        stub = namespace_service_pb2_grpc.NamespaceServiceStub(channel)
        got = await stub.GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(),
            metadata=auth(tenant.admin, ns.name, **{"x-request-id": "via-nginx-1"}),
        )
    assert got.namespace.namespace_id == ns.namespace_id
    (line,) = access_lines(caplog, "via-nginx-1")
    # meshgate saw the proxy on the socket and the client's certificate in the header
    assert line.peer == CLIENT_ID  # type: ignore[attr-defined]


async def test_a_forged_xfcc_is_overwritten_by_nginx_and_not_believed(
    nginx: Nginx, pki: Pki, tenant: Tenant, caplog: pytest.LogCaptureFixture
) -> None:
    """A plain client claims to be the internal workload, once and twice over."""
    caplog.set_level(logging.INFO, logger="meshgate.access")
    forged = f"By={EDGE_PROXY_ID};URI={INTERNAL_ID}"
    request = identity_service_pb2.ResolveOrganizationRequest(
        organization_id=tenant.organization_id
    )
    async with through(nginx, pki) as channel:
        stub = identity_service_pb2_grpc.IdentityServiceStub(channel)
        for n, headers in enumerate([((XFCC, forged),), ((XFCC, forged), (XFCC, forged))]):
            request_id = f"forged-via-nginx-{n}"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.ResolveOrganization(
                    request, metadata=(*headers, ("x-request-id", request_id))
                )
            # not INVALID_ARGUMENT for a repeated header: nginx replaced them all with one
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            (line,) = access_lines(caplog, request_id)
            assert line.peer == CLIENT_ID  # type: ignore[attr-defined]


async def test_an_internal_workload_reaches_an_internal_method_through_nginx(
    nginx: Nginx, pki: Pki, tenant: Tenant
) -> None:
    request = identity_service_pb2.ResolveOrganizationRequest(
        organization_id=tenant.organization_id
    )
    async with through(nginx, pki, "internal") as channel:
        resolved = await identity_service_pb2_grpc.IdentityServiceStub(channel).ResolveOrganization(
            request
        )
    assert resolved.organization_id == tenant.organization_id
    assert len(resolved.internal_id) == 36


async def test_the_same_forwarding_from_an_untrusted_proxy_is_refused(
    behind_nginx: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    """What nginx sends, sent by a peer that is not on this server's trusted list (the
    test PKI's other proxy certificate): refused, so the trust is in nginx's certificate."""
    xfcc = 'Cert="' + quote(pki.read("internal.pem").decode(), safe="") + '"'
    async with grpc.aio.secure_channel(
        f"localhost:{behind_nginx.port}", client_credentials(pki, "proxy")
    ) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await identity_service_pb2_grpc.IdentityServiceStub(channel).ResolveOrganization(
                identity_service_pb2.ResolveOrganizationRequest(
                    organization_id=tenant.organization_id
                ),
                metadata=((XFCC, xfcc),),
            )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "trusted proxy" in (info.value.details() or "")


@pytest.mark.parametrize("identity", [None, "foreign"])
async def test_a_client_without_a_mesh_certificate_is_refused_at_nginx(
    nginx: Nginx, pki: Pki, tenant: Tenant, caplog: pytest.LogCaptureFixture, identity: str | None
) -> None:
    """No certificate, or one from another CA: UNAUTHENTICATED from nginx itself."""
    caplog.set_level(logging.INFO, logger="meshgate.access")
    credentials = (
        client_credentials(pki, identity)
        if identity
        else grpc.ssl_channel_credentials(root_certificates=pki.read("ca.pem"))
    )
    request_id = f"refused-at-nginx-{identity}"
    async with grpc.aio.secure_channel(nginx.target, credentials) as channel:
        stub = namespace_service_pb2_grpc.NamespaceServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetNamespace(
                namespace_service_pb2.GetNamespaceRequest(),
                metadata=auth(tenant.admin, **{"x-request-id": request_id}),
                timeout=10,
            )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "client certificate" in (info.value.details() or "")
    assert access_lines(caplog, request_id) == []  # meshgate never saw the call


async def test_grpcurl_through_nginx(nginx: Nginx, pki: Pki, tenant: Tenant) -> None:
    """Reflection (a bidirectional stream) and a unary call, as an operator runs them."""

    async def run(identity: str, *tail: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            grpcurl_binary(),
            "-cacert",
            str(pki.path("ca.pem")),
            "-cert",
            str(pki.path(f"{identity}.pem")),
            "-key",
            str(pki.path(f"{identity}-key.pem")),
            *tail[:-1],
            nginx.target,
            tail[-1],
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    code, out, err = await run("client", "list")
    assert code == 0, err
    assert "meshgate.v1.IdentityService" in out.split()
    body = json.dumps({"organization_id": tenant.organization_id})
    code, out, err = await run("internal", "-d", body, RESOLVE.lstrip("/"))
    assert code == 0, err
    assert json.loads(out)["organization_id"] == tenant.organization_id
    code, out, err = await run(
        "client", "-H", f"{XFCC}: URI={INTERNAL_ID}", "-d", body, RESOLVE.lstrip("/")
    )
    assert code != 0 and "PermissionDenied" in err
