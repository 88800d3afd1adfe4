"""SIGTERM: health turns NOT_SERVING at once while calls are still served for the drain
delay, then in-flight calls drain and the process exits.

A load balancer polling health must see NOT_SERVING before the listener closes (before:
health went straight from SERVING to connection refused), and calls that still arrive
during the delay, on open connections and on new ones, succeed.
"""

from __future__ import annotations

import asyncio
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2
from meshgate.v1 import organization_service_pb2, organization_service_pb2_grpc

from server.settings import Settings
from tests.support.clients import auth, client_credentials, health_check
from tests.support.pki import Pki
from tests.support.processes import start_replica
from tests.support.tenants import Tenant

DRAIN_DELAY_S = 2.0
GET_ORG = organization_service_pb2.GetOrganizationRequest()


async def served(channel: grpc.aio.Channel, secret: str) -> bool:
    stub = organization_service_pb2_grpc.OrganizationServiceStub(channel)
    try:
        await stub.GetOrganization(GET_ORG, metadata=auth(secret), timeout=1)
        return True
    except grpc.aio.AioRpcError:
        return False


@pytest.mark.slow
async def test_health_turns_not_serving_before_the_listener_closes(
    settings: Settings, pki: Pki, tenant: Tenant, tmp_path_factory: pytest.TempPathFactory
) -> None:
    replica = start_replica(
        settings,
        pki,
        tmp_path_factory.mktemp("drain"),
        MESHGATE_DRAIN_DELAY_S=str(DRAIN_DELAY_S),
        MESHGATE_SHUTDOWN_GRACE_S="2",
    )
    statuses: list[tuple[float, str]] = []  # (seconds after SIGTERM, what health said)
    served_while_draining = served_on_new_connection = 0
    try:
        async with grpc.aio.secure_channel(replica.target, client_credentials(pki)) as channel:
            check = health_check(channel)
            assert await served(channel, tenant.admin)
            replica.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            while time.monotonic() - signalled < DRAIN_DELAY_S + 5:
                try:
                    answer = await check(health_pb2.HealthCheckRequest(), timeout=0.5)
                    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
                except grpc.aio.AioRpcError as error:
                    status = error.code().name
                statuses.append((time.monotonic() - signalled, status))
                if status == "NOT_SERVING":
                    served_while_draining += await served(channel, tenant.admin)
                    async with grpc.aio.secure_channel(
                        replica.target, client_credentials(pki)
                    ) as fresh:
                        served_on_new_connection += await served(fresh, tenant.admin)
                elif status != "SERVING":
                    break
                await asyncio.sleep(0.05)
        code = await asyncio.to_thread(replica.process.wait, 15)
    finally:
        if replica.process.poll() is None:
            replica.process.kill()
    seen = [status for _, status in statuses]
    first_not_serving = next(t for t, s in statuses if s == "NOT_SERVING")
    closed_at = statuses[-1][0]
    print(
        f"\nSIGTERM: NOT_SERVING after {first_not_serving * 1000:.0f} ms, listener closed after"
        f" {closed_at:.2f}s; {served_while_draining} calls served while draining"
        f" ({served_on_new_connection} on new connections)"
    )
    assert "NOT_SERVING" in seen
    assert seen.index("NOT_SERVING") < len(seen) - 1  # seen before health stopped answering
    assert seen[-1] not in ("SERVING", "NOT_SERVING")  # then the listener closed
    assert "SERVING" not in seen[seen.index("NOT_SERVING") :]
    assert first_not_serving < 0.5
    assert closed_at >= DRAIN_DELAY_S * 0.75
    assert served_while_draining > 0 and served_on_new_connection > 0
    assert code == 0
    assert "NOT_SERVING" in replica.log() and '"stopped"' in replica.log()
