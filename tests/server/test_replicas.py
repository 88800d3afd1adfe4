"""Two replicas sharing one Redis and one MongoDB: revocations propagate within a second."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator

import grpc
import pytest
from meshgate.v1 import (
    key_service_pb2,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from server.settings import Settings
from tests.support.clients import auth, client_credentials
from tests.support.pki import Pki
from tests.support.processes import Replica, start_replica
from tests.support.tenants import Tenant
from tests.support.waiting import eventually

GET_ORG = organization_service_pb2.GetOrganizationRequest()


@pytest.fixture(scope="module")
def replica(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Replica]:
    started = start_replica(settings, pki, tmp_path_factory.mktemp("replica"))
    yield started
    if started.process.poll() is None:
        started.process.kill()


async def accepted(
    stub: organization_service_pb2_grpc.OrganizationServiceAsyncStub, secret: str
) -> bool:
    try:
        await stub.GetOrganization(GET_ORG, metadata=auth(secret), timeout=2)
        return True
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error.details()
        return False


async def test_revocation_reaches_the_other_replica_within_a_second(
    replica: Replica, tenant: Tenant, pki: Pki
) -> None:
    delays: list[float] = []
    async with grpc.aio.secure_channel(replica.target, client_credentials(pki)) as channel:
        other = organization_service_pb2_grpc.OrganizationServiceStub(channel)
        for _ in range(5):
            created = await tenant.key(options_pb2.PERMISSION_READ)
            assert await accepted(other, created.secret)  # now cached on the other replica
            assert await accepted(other, created.secret)
            revoked_at = time.monotonic()
            await tenant.keys.RevokeKey(
                key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id),
                metadata=auth(tenant.admin),
            )

            async def refused_there() -> bool:
                return not await accepted(other, created.secret)  # noqa: B023

            await eventually(refused_there, timeout_s=3.0, interval_s=0.01)
            delays.append(time.monotonic() - revoked_at)
    print(
        f"revocation propagation: median {statistics.median(delays) * 1000:.1f} ms,"
        f" max {max(delays) * 1000:.1f} ms"
    )
    assert max(delays) < 1.0


async def test_rotation_without_grace_reaches_the_other_replica(
    replica: Replica, tenant: Tenant, pki: Pki
) -> None:
    created = await tenant.key(options_pb2.PERMISSION_READ)
    async with grpc.aio.secure_channel(replica.target, client_credentials(pki)) as channel:
        other = organization_service_pb2_grpc.OrganizationServiceStub(channel)
        assert await accepted(other, created.secret)
        rotated = await tenant.keys.RotateKey(
            key_service_pb2.RotateKeyRequest(key_id=created.key.key_id), metadata=auth(tenant.admin)
        )

        async def old_refused() -> bool:
            return not await accepted(other, created.secret)

        assert await eventually(old_refused, timeout_s=3.0) < 1.0
        assert await accepted(other, rotated.secret)


def test_sigterm_drains_and_exits_cleanly(replica: Replica) -> None:
    assert replica.terminate() == 0
    log = replica.log()
    assert "draining" in log and '"stopped"' in log
