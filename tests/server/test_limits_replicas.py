"""Three `meshgate serve` processes sharing one real redis-server.

- Admitted calls stay within the stated bound of one bucket's capacity.
- Redis killed under load: calls keep being answered (rate limits fall back to
  a local limiter, credits fail closed), none hangs; Redis restarted: limits
  resume without restarting the servers.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from meshgate.v1 import (
    document_service_pb2,
    document_service_pb2_grpc,
    organization_service_pb2,
    organization_service_pb2_grpc,
)

from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Secret, Settings
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from tests.support.clients import auth, client_credentials
from tests.support.pki import Pki
from tests.support.processes import RedisServer, Replica, free_port, start_replica

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
# the cluster's own redis-server and three `meshgate serve` replicas on it
Cluster = tuple[RedisServer, list[Replica]]


@pytest.fixture(scope="module")
def cluster(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    workdir = tmp_path_factory.mktemp("cluster")
    redis = RedisServer.on_free_port(workdir)
    redis.start()
    plans = workdir / "plans.json"
    plans.write_text(json.dumps(PLANS))
    own = replace(settings, redis_url=Secret(redis.url))
    env = {"MESHGATE_PLANS_FILE": str(plans), "MESHGATE_DEFAULT_PLAN": "test"}
    with ThreadPoolExecutor(3) as pool:
        replicas = list(pool.map(lambda _: start_replica(own, pki, workdir, **env), range(3)))
    yield redis, replicas
    for replica in replicas:
        if replica.process.poll() is None:
            replica.terminate()
    redis.stop()


async def hammer(
    replicas: list[Replica], pki: Pki, secret: str, seconds: float
) -> tuple[Counter[str], float, float]:
    """Concurrent GetOrganization calls on every replica: (codes, elapsed, slowest call)."""
    codes: Counter[str] = Counter()
    slowest = 0.0
    channels = [grpc.aio.secure_channel(r.target, client_credentials(pki)) for r in replicas]
    started = time.monotonic()

    async def worker(channel: grpc.aio.Channel) -> None:
        nonlocal slowest
        stub = organization_service_pb2_grpc.OrganizationServiceStub(channel)
        while time.monotonic() - started < seconds:
            t0 = time.monotonic()
            try:
                await stub.GetOrganization(GET_ORG, metadata=auth(secret), timeout=5)
                codes["OK"] += 1
            except grpc.aio.AioRpcError as error:
                codes[error.code().name] += 1
            slowest = max(slowest, time.monotonic() - t0)

    try:
        await asyncio.gather(*(worker(ch) for ch in channels for _ in range(6)))
    finally:
        for channel in channels:
            await channel.close(None)
    return codes, time.monotonic() - started, slowest


async def tenant_on_test_plan(backends: Backends) -> tuple[str, str]:
    result = await bootstrap(backends, name="limits", plan="test", environment="development")
    org = await OrganizationStore(mongo=backends.mongo).get(result.organization_id)
    ns = await NamespaceStore(mongo=backends.mongo).create(
        internal_id=org.internal_id, name="limits", environment="development"
    )
    return result.secret, ns.namespace_id


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
    cluster: Cluster, backends: Backends, pki: Pki
) -> None:
    _, replicas = cluster
    secret, _ = await tenant_on_test_plan(backends)
    codes, elapsed, _ = await hammer(replicas, pki, secret, 3.0)
    capacity = BURST + RATE * elapsed
    floor = capacity - 2 * len(replicas) * LEASE - RATE * 0.25
    print(
        f"\n3 replicas, {elapsed:.2f}s: admitted {codes['OK']}"
        f" (capacity {capacity:.1f}), {dict(codes)}"
    )
    assert set(codes) == {"OK", "RESOURCE_EXHAUSTED"}
    assert floor <= codes["OK"] <= capacity


@pytest.mark.slow
async def test_redis_outage_and_recovery(cluster: Cluster, backends: Backends, pki: Pki) -> None:
    redis, replicas = cluster
    secret, namespace_id = await tenant_on_test_plan(backends)
    assert await list_documents(replicas[0], pki, secret, namespace_id) == "OK"
    redis.stop()
    try:
        codes, elapsed, slowest = await hammer(replicas, pki, secret, 2.0)
        print(
            f"\nRedis down: {dict(codes)} in {elapsed:.2f}s, slowest call {slowest * 1000:.0f} ms"
        )
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}  # answered by the local fallback limiter
        assert slowest < 1.5  # no call hangs on the dead Redis
        assert codes["OK"] <= len(replicas) * (
            BURST + RATE * elapsed
        )  # the documented fallback bound
        credit_codes = [
            await list_documents(replicas[0], pki, secret, namespace_id) for _ in range(40)
        ]
        assert (
            "UNAVAILABLE" in credit_codes
        )  # credits fail closed once the local reservation is spent
        assert set(credit_codes) <= {"OK", "UNAVAILABLE"}
    finally:
        redis.start()
    await asyncio.sleep(1.5)  # the limiter retries Redis after its back-off
    # a replica whose pooled connection broke with the old Redis may fall back once more
    # (for a second) on its first try: give recovery that second, then measure
    await hammer(replicas, pki, secret, 1.0)
    codes, elapsed, _ = await hammer(replicas, pki, secret, 2.0)
    capacity = BURST + RATE * elapsed
    print(f"Redis back: admitted {codes['OK']} (capacity {capacity:.1f}), {dict(codes)}")
    assert codes["OK"] <= capacity and codes["RESOURCE_EXHAUSTED"] > 0
    assert await list_documents(replicas[1], pki, secret, namespace_id) == "OK"


def test_bad_plans_are_refused_at_start(settings: Settings, tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support.processes import ROOT, replica_env

    cases = {
        "zero rate": {"per_second": 0, "burst": 5},
        "negative burst": {"per_second": 1, "burst": -5},
        "fractional burst": {"per_second": 1, "burst": 1.5},
    }
    for name, bad in cases.items():
        plans = json.loads(json.dumps(PLANS))
        plans["test"]["limits"]["search"] = bad
        path = tmp_path / f"{name.replace(' ', '_')}.json"
        path.write_text(json.dumps(plans))
        env = replica_env(
            settings, free_port(), MESHGATE_PLANS_FILE=str(path), MESHGATE_DEFAULT_PLAN="test"
        )
        result = subprocess.run(
            [sys.executable, "-m", "server.cli", "serve"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2, name
        assert "MESHGATE_PLANS_FILE" in result.stderr and "limits.search" in result.stderr, (
            result.stderr
        )
