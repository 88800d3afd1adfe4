"""The real grpcurl binary against a started server: what operators do."""

from __future__ import annotations

import asyncio
import json

from server.app import RunningServer
from tests.support.clients import grpcurl_binary
from tests.support.pki import Pki
from tests.support.tenants import Tenant


async def grpcurl(
    server: RunningServer, pki: Pki, *tail: str, flags: tuple[str, ...] = ()
) -> tuple[int, str, str]:
    """`grpcurl <tls flags> <flags> localhost:<port> <tail>`."""
    process = await asyncio.create_subprocess_exec(
        grpcurl_binary(),
        "-cacert",
        str(pki.path("ca.pem")),
        "-cert",
        str(pki.path("client.pem")),
        "-key",
        str(pki.path("client-key.pem")),
        *flags,
        f"localhost:{server.port}",
        *tail,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_list_services_via_reflection(server: RunningServer, pki: Pki) -> None:
    code, out, err = await grpcurl(server, pki, "list")
    assert code == 0, err
    services = set(out.split())
    assert {
        "meshgate.v1.KeyService",
        "meshgate.v1.NamespaceService",
        "meshgate.v1.OrganizationService",
        "meshgate.v1.IdentityService",
        "grpc.health.v1.Health",
    } <= services


async def test_describe_and_health(server: RunningServer, pki: Pki) -> None:
    code, out, err = await grpcurl(server, pki, "describe", "meshgate.v1.KeyService.RotateKey")
    assert code == 0, err
    assert "RotateKeyRequest" in out
    code, out, err = await grpcurl(server, pki, "grpc.health.v1.Health/Check")
    assert code == 0, err
    assert json.loads(out) == {"status": "SERVING"}


async def test_authenticated_call_and_refusal(
    server: RunningServer, pki: Pki, tenant: Tenant
) -> None:
    bearer = ("-H", f"authorization: Bearer {tenant.admin}")
    code, out, err = await grpcurl(
        server,
        pki,
        "meshgate.v1.NamespaceService/CreateNamespace",
        flags=(*bearer, "-d", '{"name": "from-grpcurl", "environment": "ENVIRONMENT_DEVELOPMENT"}'),
    )
    assert code == 0, err
    created = json.loads(out)["namespace"]
    code, out, err = await grpcurl(
        server,
        pki,
        "meshgate.v1.NamespaceService/GetNamespace",
        flags=(*bearer, "-H", "x-namespace: from-grpcurl"),
    )
    assert code == 0, err
    assert json.loads(out)["namespace"]["namespace_id"] == created["namespace_id"]
    code, out, err = await grpcurl(server, pki, "meshgate.v1.OrganizationService/GetOrganization")
    assert code != 0
    assert "Unauthenticated" in err and "missing or invalid API key" in err
