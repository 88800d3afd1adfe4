"""Credits across three `meshgate serve` replicas sharing one redis-server and MongoDB.

- A 100-credit month can be spent to the last credit within seconds from any replica,
  and never beyond: no replica sits on credits another needs, and a refusal while
  other replicas hold some says "retry in seconds", not "next month".
- Redis killed (no persistence) and restarted empty: the balance is rebuilt from the
  MongoDB ledger, so a used-up month stays used up.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator

import grpc
import pytest
from meshgate.v1 import namespace_service_pb2, namespace_service_pb2_grpc

from server.backends import Backends
from server.settings import Settings
from tests.support.clients import auth, client_credentials, trailers_of
from tests.support.cluster import Cluster, limits, organization_on_plan, start_cluster
from tests.support.pki import Pki

ALLOWANCE = 100
PLANS = {"hundred": {"monthly_credits": ALLOWANCE, "limits": limits(1000, 1000)}}
MONTH_END = 24 * 3600  # a retry-after longer than a day means "when the month ends"


@pytest.fixture(scope="module")
def cluster(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    started = start_cluster(settings, pki, tmp_path_factory.mktemp("credits"), plans=PLANS)
    yield started
    started.stop()


class Spender:
    """GetNamespace (1 credit) on every replica of the cluster, counted."""

    def __init__(self, cluster: Cluster, pki: Pki, secret: str, namespace_id: str) -> None:
        self.channels = [
            grpc.aio.secure_channel(r.target, client_credentials(pki)) for r in cluster.replicas
        ]
        self.stubs = [namespace_service_pb2_grpc.NamespaceServiceStub(c) for c in self.channels]
        self.md = auth(secret, namespace_id)
        self.codes: Counter[str] = Counter()

    async def call(self, replica: int) -> float | None:
        """None when the call passed, else the refusal's retry-after (0: not a refusal)."""
        try:
            await self.stubs[replica].GetNamespace(
                namespace_service_pb2.GetNamespaceRequest(), metadata=self.md, timeout=5
            )
            self.codes["OK"] += 1
            return None
        except grpc.aio.AioRpcError as error:
            self.codes[error.code().name] += 1
            if error.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                return 0.0
            return float(dict(trailers_of(error))["retry-after"])

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


async def spend_all(spender: Spender, replicas: list[int], deadline_s: float) -> list[float]:
    """Calls on `replicas` (round robin) until a refusal says the month is over, waiting
    whatever shorter retry-after a refusal gives; returns those shorter retry-afters."""
    short_waits: list[float] = []
    started = time.monotonic()
    turn = 0
    while time.monotonic() - started < deadline_s:
        retry_after = await spender.call(replicas[turn % len(replicas)])
        turn += 1
        if retry_after is None:
            continue
        if retry_after >= MONTH_END:
            return short_waits
        short_waits.append(retry_after)
        await asyncio.sleep(min(retry_after, 3.0))
    pytest.fail(f"the month was not used up within {deadline_s}s: {dict(spender.codes)}")


@pytest.mark.slow
async def test_every_credit_can_be_spent_from_any_replica_and_no_more(
    cluster: Cluster, backends: Backends, pki: Pki
) -> None:
    secret, namespace_id = await organization_on_plan(backends, "hundred", "hoard")
    spender = Spender(cluster, pki, secret, namespace_id)
    try:
        # every replica serves (and reserves) for a while, concurrently
        async def some(replica: int) -> None:
            for _ in range(10):
                assert await spender.call(replica) is None

        await asyncio.gather(*(some(i) for i in range(3) for _ in range(2)))
        assert spender.codes["OK"] == 60
        # then the rest only from the third one: what the others hold comes back
        started = time.monotonic()
        waits = await spend_all(spender, [2], deadline_s=20)
        elapsed = time.monotonic() - started
        print(
            f"\n100 credits, 3 replicas: the last 40 from one replica in {elapsed:.1f}s,"
            f" {len(waits)} short refusals (retry-after {sorted(set(waits))}),"
            f" {dict(spender.codes)}"
        )
        assert spender.codes["OK"] == ALLOWANCE
        assert all(w <= 5 for w in waits)
        assert elapsed < 10
        for replica in range(3):  # used up everywhere, for the month (once all is settled)
            await spend_all(spender, [replica], deadline_s=10)
        assert spender.codes["OK"] == ALLOWANCE
    finally:
        await spender.close()


@pytest.mark.slow
async def test_a_used_up_month_stays_used_up_when_redis_loses_its_data(
    cluster: Cluster, backends: Backends, pki: Pki
) -> None:
    secret, namespace_id = await organization_on_plan(backends, "hundred", "durable")
    spender = Spender(cluster, pki, secret, namespace_id)
    try:
        await spend_all(spender, [0], deadline_s=20)
        assert spender.codes["OK"] == ALLOWANCE
        await asyncio.sleep(2.5)  # every replica's usage is in the ledger
        cluster.redis.kill()  # SIGKILL, no persistence: the balances are gone
        cluster.redis.start()
        before = spender.codes["OK"]
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # every replica, until each has reconnected
            for replica in range(3):
                await spender.call(replica)
            await asyncio.sleep(0.05)
        print(f"\nafter Redis lost its data: {dict(spender.codes)}")
        assert spender.codes["OK"] == before  # not one credit more
        assert spender.codes["RESOURCE_EXHAUSTED"] > 0
    finally:
        await spender.close()
