"""Three `meshgate serve` processes sharing one real redis-server, then a Redis Cluster.

On both:

- Admitted calls stay within the stated bound of one bucket's capacity.
- A revocation on one replica reaches the other two within a second.

On the single node, Redis killed under load: calls keep being answered (rate
limits fall back to a local limiter, credits fail closed), none hangs; Redis
restarted: limits resume without restarting the servers. On the cluster, the
primary serving the organization's keys killed under load: its replica takes
over and calls recover; then the shard's last node killed: the cluster is down
and the same Redis-down policy applies, with nothing hanging.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from grpc_health.v1 import health_pb2
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    options_pb2,
    organization_service_pb2,
    organization_service_pb2_grpc,
)
from redis.exceptions import RedisError

from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Secret, Settings
from storage.backends.redis_client import RedisClient
from storage.backends.redis_keys import organization_key
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth, client_credentials, health_check
from tests.support.log_guard import NEVER_LOGGED
from tests.support.pki import Pki
from tests.support.processes import (
    RedisServer,
    Replica,
    start_replicas,
    stop_replicas,
)
from tests.support.redis_cluster import LocalRedisCluster, RedisEndpoint
from tests.support.waiting import eventually

RATE, BURST = 20, 20
LEASE = 1  # storage.metering.rate_limiter.lease_size for this limit
PLANS = {
    "test": {
        "monthly_credits": 1_000_000,
        "limits": {
            "metadata": {"per_second": RATE, "burst": BURST},
            "data": {"per_second": 1000, "burst": 1000},
            "search": {"per_second": 5, "burst": 5},
            "admin": {"per_second": 100, "burst": 100},
        },
    }
}
GET_ORG = organization_service_pb2.GetOrganizationRequest()
# A call waits at most the limiter's timeout (0.5 s here) and a credit top-up's (0.5 s) on
# an unreachable Redis, against the 5 s of a call that hung; the rest is scheduling on a
# loaded 2-core machine (a full suite beside other work saw 1.7 s)
NO_HANG_S = 2.5


@dataclass
class Fleet:
    """Three `meshgate serve` replicas on their own redis-server, or on the Redis Cluster."""

    replicas: list[Replica]
    redis: RedisServer | None = None
    cluster: LocalRedisCluster | None = None


def start_fleet(
    settings: Settings, pki: Pki, *, workdir: Path, cluster: LocalRedisCluster | None
) -> Iterator[Fleet]:
    redis: RedisServer | None = None
    if cluster is not None:
        endpoint = cluster.endpoint
    else:
        redis = RedisServer.on_free_port(workdir)
        redis.start()
        endpoint = RedisEndpoint(url=redis.url, cluster=False)
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(PLANS))
    own = replace(settings, redis_url=Secret(endpoint.url), redis_cluster=endpoint.cluster)
    env = {
        "MESHGATE_PLANS_FILE": str(plans),
        "MESHGATE_DEFAULT_PLAN": "test",
        "MESHGATE_HEALTH_INTERVAL_S": "0.5",
        # a loaded CI machine can take longer than the 0.2 s default to run a script, and a
        # timeout is an outage (the local fallback): the bound below is about Redis answering
        "MESHGATE_LIMITER_TIMEOUT_S": "0.5",
    }
    try:
        replicas = start_replicas(3, own, pki, workdir, **env)
    except Exception:
        if redis is not None:
            redis.stop()
        raise
    yield Fleet(replicas=replicas, redis=redis, cluster=cluster)
    stop_replicas(replicas)
    if redis is not None:
        redis.stop()


@pytest.fixture(scope="module")
def single_fleet(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """Three replicas on their own redis-server."""
    workdir = tmp_path_factory.mktemp("fleet")
    yield from start_fleet(settings, pki, workdir=workdir, cluster=None)


@pytest.fixture(scope="module")
def cluster_fleet(
    settings: Settings,
    pki: Pki,
    tmp_path_factory: pytest.TempPathFactory,
    redis_cluster: LocalRedisCluster,
) -> Iterator[Fleet]:
    """Three replicas on the Redis Cluster."""
    workdir = tmp_path_factory.mktemp("fleet")
    yield from start_fleet(settings, pki, workdir=workdir, cluster=redis_cluster)


@pytest.fixture(params=["single", "cluster"])
def fleet(request: pytest.FixtureRequest) -> Fleet:
    """Each of the two fleets, for what must hold on both."""
    found: Fleet = request.getfixturevalue(f"{request.param}_fleet")
    return found


class Hammered(NamedTuple):
    codes: Counter[str]
    elapsed: float  # from the first call's start to the last call's answer
    slowest: float
    # from the first answer to the last call's start: the bucket was drained all along
    # (calls far faster than its rate); on a loaded machine the first calls wait for their
    # mTLS handshakes and the last for their answers, and no token is taken meanwhile
    drained: float


async def hammer(replicas: list[Replica], pki: Pki, secret: str, seconds: float) -> Hammered:
    """Concurrent GetOrganization calls on every replica for `seconds`."""
    codes: Counter[str] = Counter()
    slowest = 0.0
    first_answer, last_start, last_answer = float("inf"), 0.0, 0.0
    channels = [grpc.aio.secure_channel(r.target, client_credentials(pki)) for r in replicas]
    started = time.monotonic()

    async def worker(channel: grpc.aio.Channel) -> None:
        nonlocal slowest, first_answer, last_start, last_answer
        stub = organization_service_pb2_grpc.OrganizationServiceStub(channel)
        while (t0 := time.monotonic()) - started < seconds:
            last_start = max(last_start, t0)
            try:
                await stub.GetOrganization(GET_ORG, metadata=auth(secret), timeout=5)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
            answered = time.monotonic()
            first_answer, last_answer = min(first_answer, answered), max(last_answer, answered)
            slowest = max(slowest, answered - t0)

    try:
        await asyncio.gather(*(worker(ch) for ch in channels for _ in range(6)))
    finally:
        for channel in channels:
            await channel.close(None)
    return Hammered(codes, last_answer - started, slowest, max(0.0, last_start - first_answer))


@dataclass(frozen=True)
class PlanTenant:
    organization_id: str
    secret: str  # its ADMIN key
    namespace_id: str


async def tenant_on_test_plan(backends: Backends) -> PlanTenant:
    result = await bootstrap(backends, name="limits", plan="test", environment="development")
    NEVER_LOGGED.add(result.secret)
    org = await OrganizationStore(mongo=backends.mongo).get(result.organization_id)
    NEVER_LOGGED.add(org.internal_id)
    ns = await NamespaceStore(mongo=backends.mongo).create(
        internal_id=org.internal_id, name="limits", environment="development"
    )
    return PlanTenant(result.organization_id, result.secret, ns.namespace_id)


async def list_documents(replica: Replica, pki: Pki, secret: str, namespace_id: str) -> str:
    async with grpc.aio.secure_channel(replica.target, client_credentials(pki)) as channel:
        stub = document_service_pb2_grpc.DocumentServiceStub(channel)
        try:
            await stub.ListDocuments(
                document_service_pb2.ListDocumentsRequest(),
                metadata=auth(secret, namespace_id),
                timeout=5,
            )
            return "OK"
        except grpc.aio.AioRpcError as error:
            return error.code().name


@pytest.mark.slow
async def test_admitted_calls_stay_within_the_bound(
    fleet: Fleet, backends: Backends, pki: Pki
) -> None:
    tenant = await tenant_on_test_plan(backends)
    codes, elapsed, _, drained = await hammer(fleet.replicas, pki, tenant.secret, 3.0)
    capacity = BURST + RATE * elapsed
    floor = BURST + RATE * drained - 2 * len(fleet.replicas) * LEASE - RATE * 0.25
    print(
        f"\n3 replicas, {elapsed:.2f}s: admitted {codes['OK']}"
        f" (capacity {capacity:.1f}, floor {floor:.1f}), {dict(codes)}"
    )
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert floor <= codes["OK"] <= capacity, limiter_lines(fleet)


async def authenticated(channel: grpc.aio.Channel, secret: str) -> bool:
    """Whether the replica behind `channel` accepts the key (a rate-limited call was
    authenticated too)."""
    stub = organization_service_pb2_grpc.OrganizationServiceStub(channel)
    try:
        await stub.GetOrganization(GET_ORG, metadata=auth(secret), timeout=2)
    except grpc.aio.AioRpcError as error:
        if error.code() == grpc.StatusCode.UNAUTHENTICATED:
            return False
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
    return True


@pytest.mark.slow
async def test_a_revocation_reaches_every_replica_within_a_second(
    fleet: Fleet, backends: Backends, pki: Pki
) -> None:
    tenant = await tenant_on_test_plan(backends)
    first, *others = fleet.replicas
    # one channel per replica, connected before the revocation: a new mTLS channel per check
    # would add its handshake (hundreds of ms on a loaded machine) to the delay measured
    watching = [grpc.aio.secure_channel(r.target, client_credentials(pki)) for r in others]
    try:
        async with grpc.aio.secure_channel(first.target, client_credentials(pki)) as channel:
            keys = key_service_pb2_grpc.KeyServiceStub(channel)
            created = await keys.CreateKey(
                key_service_pb2.CreateKeyRequest(
                    name="revoked",
                    environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                    permissions=[options_pb2.PERMISSION_READ],
                ),
                metadata=auth(tenant.secret),
            )
            NEVER_LOGGED.add(created.secret)
            for other in watching:  # cached there now
                assert await authenticated(other, created.secret)
            revoked = time.monotonic()
            await keys.RevokeKey(
                key_service_pb2.RevokeKeyRequest(key_id=created.key.key_id),
                metadata=auth(tenant.secret),
            )

        async def refused_everywhere() -> bool:
            accepted = await asyncio.gather(*(authenticated(w, created.secret) for w in watching))
            return not any(accepted)

        await eventually(refused_everywhere, timeout_s=3.0, interval_s=0.05)
        delay = time.monotonic() - revoked
    finally:
        for other in watching:
            await other.close(None)
    print(f"\nrevocation on 1 of 3 replicas refused by the others after {delay * 1000:.0f} ms")
    assert delay < 1.0


async def redis_down_policy(fleet: Fleet, pki: Pki, tenant: PlanTenant) -> None:
    """What the documented Redis-down policy promises, checked under load."""
    replicas = fleet.replicas
    codes, elapsed, slowest, _ = await hammer(replicas, pki, tenant.secret, 2.0)
    print(f"Redis down: {dict(codes)} in {elapsed:.2f}s, slowest call {slowest * 1000:.0f} ms")
    assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}  # answered by the local fallback limiter
    assert slowest < NO_HANG_S  # no call hangs on the dead Redis
    assert codes["OK"] <= len(replicas) * (BURST + RATE * elapsed)  # the documented fallback bound
    credit_codes = [
        await list_documents(replicas[0], pki, tenant.secret, tenant.namespace_id)
        for _ in range(40)
    ]
    assert "UNAVAILABLE" in credit_codes  # credits fail closed once the reservation is spent
    assert set(credit_codes) <= {"OK", "UNAVAILABLE"}


def limiter_lines(fleet: Fleet) -> str:
    """What the replicas logged about the limiter (for a failing bound)."""
    return "\n".join(
        line[:300]
        for replica in fleet.replicas
        for line in replica.log().splitlines()
        if "rate limit" in line
    )


async def limits_shared_again(fleet: Fleet, pki: Pki, tenant: PlanTenant) -> None:
    """After Redis is back: the replicas share one bucket again (not N local ones)."""
    await asyncio.sleep(1.5)  # the limiter retries Redis after its back-off
    # a replica whose pooled connection broke with the old Redis may fall back once more
    # (for a second) on its first try: give recovery that second, then measure
    await hammer(fleet.replicas, pki, tenant.secret, 1.0)
    codes, elapsed, _, _ = await hammer(fleet.replicas, pki, tenant.secret, 2.0)
    capacity = BURST + RATE * elapsed
    print(f"Redis back: admitted {codes['OK']} (capacity {capacity:.1f}), {dict(codes)}")
    assert codes["OK"] <= capacity and codes["RESOURCE_EXHAUSTED"] > 0, limiter_lines(fleet)


@pytest.mark.slow
async def test_redis_outage_and_recovery(single_fleet: Fleet, backends: Backends, pki: Pki) -> None:
    """On one redis-server (a cluster's outage is a failover: the test below)."""
    fleet = single_fleet
    assert fleet.redis is not None
    tenant = await tenant_on_test_plan(backends)
    replicas = fleet.replicas
    assert await list_documents(replicas[0], pki, tenant.secret, tenant.namespace_id) == "OK"
    fleet.redis.stop()
    try:
        await redis_down_policy(fleet, pki, tenant)
    finally:
        fleet.redis.start()
    await limits_shared_again(fleet, pki, tenant)
    assert await list_documents(replicas[1], pki, tenant.secret, tenant.namespace_id) == "OK"


async def writes_resume(redis: RedisClient, key: str, *, since: float) -> tuple[float, int]:
    """(seconds from `since` until a write to `key`'s slot succeeds again, failed writes)."""
    failed = 0
    while True:
        try:
            await asyncio.wait_for(redis.set(key, "1", px=60_000), 0.5)
            return time.monotonic() - since, failed
        except (RedisError, OSError, TimeoutError):
            failed += 1
            assert time.monotonic() - since < 30, "the slot never came back"
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_a_primary_killed_under_load(
    cluster_fleet: Fleet, backends: Backends, pki: Pki
) -> None:
    fleet = cluster_fleet
    assert fleet.cluster is not None
    cluster, replicas = fleet.cluster, fleet.replicas
    tenant = await tenant_on_test_plan(backends)
    bucket = organization_key(tenant.organization_id, "rl", "metadata")  # the org's slot
    assert await list_documents(replicas[0], pki, tenant.secret, tenant.namespace_id) == "OK"
    probe = await cluster.endpoint.connect(timeout_s=0.5)
    try:
        # with a replica: it takes the slot over, and the calls never notice
        primary = cluster.primary_of(bucket)
        load = asyncio.create_task(hammer(replicas, pki, tenant.secret, 6.0))
        await asyncio.sleep(0.5)
        killed = time.monotonic()
        cluster.kill(primary)
        failover_s, failed_writes = await writes_resume(
            probe, organization_key(tenant.organization_id, "probe"), since=killed
        )
        codes, elapsed, slowest, _ = await load
        print(
            f"\nprimary killed under load: writes to its slots resumed after {failover_s:.2f} s"
            f" ({failed_writes} failed probe writes); calls {dict(codes)} in {elapsed:.2f} s,"
            f" slowest {slowest * 1000:.0f} ms"
        )
        assert cluster.primary_of(bucket) != primary
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"} and slowest < NO_HANG_S
        await limits_shared_again(fleet, pki, tenant)
        assert await list_documents(replicas[1], pki, tenant.secret, tenant.namespace_id) == "OK"

        # the shard's last node: no replica left, the cluster is down (cluster_state:fail)
        cluster.kill(cluster.primary_of(bucket))
        await redis_down_policy(fleet, pki, tenant)

        async def not_serving() -> bool:
            async with grpc.aio.secure_channel(
                replicas[2].target, client_credentials(pki)
            ) as channel:
                response = await health_check(channel)(
                    health_pb2.HealthCheckRequest(service="meshgate.v1.DocumentService")
                )
                return response.status == health_pb2.HealthCheckResponse.NOT_SERVING

        await eventually(not_serving, timeout_s=5.0, interval_s=0.1)
    finally:
        await probe.aclose()
        await asyncio.to_thread(cluster.restore)

    async def served() -> bool:
        code = await list_documents(replicas[1], pki, tenant.secret, tenant.namespace_id)
        return code == "OK"

    recovered = await eventually(served, timeout_s=10.0, interval_s=0.2)
    print(f"cluster whole again: calls OK {recovered:.2f} s after the restart")
