"""The abuse soak (issue 21): one `meshgate serve` replica under a bounded mix of hostile
traffic for a fixed time, while a tenant's legitimate calls go on beside it.

The attacks (tests/support/abuse.py): Envoy Checks of random paths with random and
malformed keys and principals; ShouldRateLimit bursts of random descriptors (unknown
organizations, malformed ids, the 16-descriptor and 100-hit edges and one past them);
a bound sidecar naming an organization outside its binding (Check and ShouldRateLimit);
API calls with random, malformed and revoked keys; unknown, malformed and another tenant's
namespaces in x-namespace; metadata over the request chain's limit and random method
paths written raw over HTTP/2; and restore bombs through ImportNamespace.

Every half second the test reads the server's own RSS (/proc/<pid>/status), the number
of series on its /metrics and its loop lag (meshgate_event_loop_lag_max_seconds). It
passes when each stays under the bound stated below, every legitimate call succeeded and
the server is healthy at the end. The figures are printed (`pytest -s` or `-rA`)."""

from __future__ import annotations

import asyncio
import json
import random
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2
from grpc_health.v1 import health_pb2
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import key_service_pb2, organization_service_pb2

from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Settings
from tests.support.abuse import Hostile, Sampler, outcome_of, run_workers
from tests.support.clients import auth, client_credentials, health_check
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.log_guard import NEVER_LOGGED
from tests.support.namespace_clients import Docs, doc
from tests.support.pki import PROXY_ID, SHOP_SIDECAR_ID, Pki
from tests.support.processes import Replica, free_port, start_replica, stop_replicas
from tests.support.tenants import Tenant, create_tenant, org_stub

pytestmark = pytest.mark.slow

WARM_UP_S = 4.0
ATTACK_S = 35.0
ATTACK_WORKERS = 6
WARM_UP_ROUNDS = 20  # each attack's random variants, before the series are counted
BOMBS = 12  # restore bombs, one every ATTACK_S / BOMBS seconds
LEGIT_EVERY_S = 0.05

# The bounds, from soaks on a 2-core machine shared with other test runs (the figures are
# in docs/testing.md, "The abuse soak"), each with a margin of three times or more.
#
# RSS may rise after the warm-up by at most MAX_RSS_GROWTH_MIB at any sample, and end at
# most MAX_RSS_KEPT_MIB above the warm-up's. Measured: peaks of 7-9 MiB while a bomb's
# 1 MiB lines are decoded, given back (the end within 0.2 MiB of the warm-up). What they
# catch: refused bombs whose lines outlive their calls (before the fix in
# interceptors/chain.py: +35 MiB at the peak, +27 MiB kept after 12), the 14 KB
# per random path (+35 MiB in this soak), connections kept after their client went (70 KB
# each: +80 MiB in 35 s when the test's own client held them open).
MAX_RSS_GROWTH_MIB = 32
MAX_RSS_KEPT_MIB = 16
# /metrics may gain at most this many series after the warm-up, which ran every attack 20
# times, so each status an attack ends with already has its series. Measured: 0. Each new
# (method, status) pair of the fixed sets is 17 series; this allows three such pairs that
# random draws reach only late. A label fed by what a caller sends grows by thousands.
MAX_NEW_SERIES = 60
# the event loop's worst lag (meshgate_event_loop_lag_max_seconds, sampled every 100 ms).
# Measured: 22-95 ms. A Check, a key lookup or a step of a restore is milliseconds of loop
# time; half a second is a stall every caller and probe notices (the bomb held the
# loop 23 s), and leaves room for a CI machine whose two cores are busy with the client.
MAX_LOOP_LAG_S = 0.5
# open file descriptors of the server may grow by at most this many. Measured: 9-12 (the
# calls in flight). A connection kept after its client dropped it, or a spool file left
# open, adds one per call: hundreds.
MAX_NEW_FDS = 40

PLANS = {
    "soak": {
        "monthly_credits": 100_000_000,
        "limits": {
            name: {"per_second": 1000, "burst": 1000}
            for name in ("metadata", "data", "search", "admin")
        },
    }
}
ROUTES = {
    "routes": [
        {"grpc": "/shop.v1.StatusService/Read", "permission": "read"},
        {"grpc": "/shop.v1.AdminService/*", "permission": "admin"},
        {"http_prefix": "/api/read/", "methods": ["GET"], "permission": "read"},
    ]
}


@dataclass
class Soaked:
    replica: Replica
    metrics_port: int
    sidecar_organization: str


@pytest.fixture(scope="module")
async def soaked(
    settings: Settings, pki: Pki, backends: Backends, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Soaked]:
    """A replica with the sidecar APIs on: the proxy bound to any organization, the shop's
    sidecar to one organization of its own; its metrics on a port of its own."""
    workdir: Path = tmp_path_factory.mktemp("abuse-soak")
    bound = await bootstrap(backends, name="soak-sidecar", plan="soak", environment="development")
    NEVER_LOGGED.add(bound.secret)
    (workdir / "plans.json").write_text(json.dumps(PLANS))
    (workdir / "routes.yaml").write_text(yaml.safe_dump(ROUTES))
    bindings = {"sidecars": [
        {"identity": PROXY_ID, "organizations": "*", "principals": "*"},
        {"identity": SHOP_SIDECAR_ID, "organizations": [bound.organization_id],
         "principals": "*"},
    ]}  # fmt: skip
    (workdir / "bindings.yaml").write_text(yaml.safe_dump(bindings))
    metrics_port = free_port()
    replica = await asyncio.to_thread(
        start_replica,
        settings,
        pki,
        workdir,
        MESHGATE_PLANS_FILE=str(workdir / "plans.json"),
        MESHGATE_DEFAULT_PLAN="soak",
        MESHGATE_ROUTE_POLICY_FILE=str(workdir / "routes.yaml"),
        MESHGATE_EXT_AUTHZ_PEERS=f"{PROXY_ID},{SHOP_SIDECAR_ID}",
        MESHGATE_EXT_AUTHZ_BINDINGS_FILE=str(workdir / "bindings.yaml"),
        MESHGATE_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
        MESHGATE_LIMITER_TIMEOUT_S="1.0",
        MESHGATE_TASK_WORKERS="0",
        MESHGATE_WEBHOOK_WORKERS="0",
    )
    yield Soaked(replica, metrics_port, bound.organization_id)
    stop_replicas([replica])


class Legitimate:
    """A tenant's ordinary calls at a steady rate, every result kept: small writes and
    reads of documents, its organization, and a Check and a ShouldRateLimit about it
    through the proxy sidecar."""

    def __init__(self, tenant: Tenant, namespace: str, proxy: grpc.aio.Channel) -> None:
        self.tenant = tenant
        self.docs = Docs(tenant, namespace)
        self.proxy = proxy
        self.results: Counter[str] = Counter()
        self.failures: list[str] = []
        self.slowest_s = 0.0
        self._made = 0

    async def _create(self) -> None:
        self._made += 1
        await self.docs.create(doc(f"d{self._made}", {"n": self._made}, tag="soak"))

    async def _read(self) -> None:
        await self.docs.stub.GetDocument(
            doc_pb.GetDocumentRequest(document_id=f"d{max(1, self._made)}"), metadata=self.docs.md
        )

    async def _list(self) -> None:
        await self.docs.stub.ListDocuments(
            doc_pb.ListDocumentsRequest(page_size=5), metadata=self.docs.md
        )

    async def _organization(self) -> None:
        await org_stub(self.tenant).GetOrganization(
            organization_service_pb2.GetOrganizationRequest(), metadata=auth(self.tenant.admin)
        )

    async def _check(self) -> None:
        request = check_request(
            "/shop.v1.StatusService/Read", {"authorization": f"Bearer {self.tenant.admin}"}
        )
        response = await Check(self.proxy)(request)
        assert response.HasField("ok_response"), response.denied_response.status.code

    async def _rate_limit(self) -> None:
        request = rate_limit_request(
            descriptor(("organization_id", self.tenant.organization_id), ("rate_class", "data"))
        )
        answer = await RateLimit(self.proxy)(request)
        assert answer.overall_code == rls_pb2.RateLimitResponse.OK, answer

    def calls(self) -> list[tuple[str, Callable[[], Awaitable[None]]]]:
        return [
            ("create", self._create),
            ("get", self._read),
            ("list", self._list),
            ("organization", self._organization),
            ("check", self._check),
            ("rls", self._rate_limit),
        ]

    async def run(self, until: float) -> None:
        calls = self.calls()
        index = 0
        while time.monotonic() < until:
            name, call = calls[index % len(calls)]
            index += 1
            started = time.monotonic()
            try:
                await call()
                self.results[f"{name}:ok"] += 1
            except Exception as error:  # every failure is kept and reported
                self.results[f"{name}:{outcome_of(error)}"] += 1
                self.failures.append(f"{name}: {error!r}"[:300])
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            await asyncio.sleep(LEGIT_EVERY_S)

    @property
    def ok(self) -> int:
        return sum(n for k, n in self.results.items() if k.endswith(":ok"))


def _healthz(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as response:
        status: int = response.status
        return status


async def test_one_replica_under_hostile_traffic_stays_bounded_and_serves_its_tenants(
    soaked: Soaked, pki: Pki, backends: Backends
) -> None:
    target = soaked.replica.target
    async with (
        grpc.aio.secure_channel(target, client_credentials(pki)) as direct,
        grpc.aio.secure_channel(target, client_credentials(pki, "proxy")) as proxy,
        grpc.aio.secure_channel(target, client_credentials(pki, "shop-sidecar")) as shop,
    ):
        victim = await create_tenant(backends, direct, environment="development", plan="soak")
        attacker = await create_tenant(backends, direct, environment="development", plan="soak")
        victim_namespace = (await victim.namespace()).namespace_id
        attacker_namespace = (await attacker.namespace()).namespace_id
        revoked = await attacker.key()
        await attacker.keys.RevokeKey(
            key_service_pb2.RevokeKeyRequest(key_id=revoked.key.key_id),
            metadata=auth(attacker.admin),
        )
        hostile = Hostile(
            port=soaked.replica.port,
            pki=pki,
            proxy=proxy,
            shop=shop,
            attacker=attacker,
            attacker_namespace=attacker_namespace,
            victim_organization=victim.organization_id,
            victim_namespace=victim_namespace,
            revoked=revoked.secret,
        )
        legit = Legitimate(victim, victim_namespace, proxy)
        sampler = Sampler(pid=soaked.replica.process.pid, metrics_port=soaked.metrics_port)
        hostile_calls: Counter[str] = Counter()
        started = time.monotonic()
        end = started + WARM_UP_S + ATTACK_S
        legit_task = asyncio.create_task(legit.run(end))
        sampler_task = asyncio.create_task(sampler.run(end))

        # warm-up: legitimate calls, and every attack a few times (the codes they end with)
        for attack in hostile.every_attack(WARM_UP_ROUNDS):
            hostile_calls[await attack()] += 1
        await asyncio.sleep(max(0.0, started + WARM_UP_S - time.monotonic()))
        warm = await sampler.take()

        # the attack: workers on the mix, and restore bombs at a steady pace beside them
        async def bombs() -> None:
            for i in range(BOMBS):
                await asyncio.sleep(max(0.0, warm.at + i * ATTACK_S / BOMBS - time.monotonic()))
                hostile_calls[await hostile.restore_bomb()] += 1

        mix = hostile.mix()
        await asyncio.gather(
            run_workers(
                lambda: random.choice(mix), workers=ATTACK_WORKERS, until=end, tally=hostile_calls
            ),
            bombs(),
        )
        await asyncio.gather(legit_task, sampler_task)
        last = await sampler.take()
        health = await health_check(direct)(health_pb2.HealthCheckRequest(), timeout=5)
        healthz = await asyncio.to_thread(_healthz, soaked.metrics_port)

    after = [s for s in sampler.taken if s.at >= warm.at]
    peak_rss = max(s.rss_kib for s in after)
    worst_lag = max(s.lag_max_s for s in sampler.taken)
    total_legit = sum(legit.results.values())
    print(
        "\nabuse soak:"
        f" {time.monotonic() - started:.1f} s ({WARM_UP_S:.0f} s warm-up, {ATTACK_S:.0f} s attack,"
        f" {ATTACK_WORKERS} workers, {len(sampler.taken)} samples)"
        f"\n  RSS MiB: start {sampler.taken[0].rss_kib / 1024:.1f}, warm {warm.rss_kib / 1024:.1f},"
        f" peak {peak_rss / 1024:.1f}, end {last.rss_kib / 1024:.1f} (after the warm-up:"
        f" peak +{(peak_rss - warm.rss_kib) / 1024:.1f}, bound {MAX_RSS_GROWTH_MIB};"
        f" end {(last.rss_kib - warm.rss_kib) / 1024:+.1f}, bound {MAX_RSS_KEPT_MIB})"
        f"\n  RSS MiB every 2 s: {[round(s.rss_kib / 1024) for s in sampler.taken[::4]]}"
        f"\n  open fds: warm {warm.fds}, peak {max(s.fds for s in after)}, end {last.fds}"
        f" (bound warm + {MAX_NEW_FDS})"
        f"\n  series every 2 s: {[len(s.series) for s in sampler.taken[::4]]}"
        f"\n  /metrics series: start {len(sampler.taken[0].series)}, warm {len(warm.series)},"
        f" end {len(last.series)} (bound warm + {MAX_NEW_SERIES})"
        f"\n  worst loop lag: {worst_lag * 1000:.0f} ms (bound {MAX_LOOP_LAG_S * 1000:.0f} ms)"
        f"\n  legitimate calls: {legit.ok}/{total_legit} ok, slowest {legit.slowest_s:.2f} s,"
        f" {dict(sorted(legit.results.items()))}"
        f"\n  new series: {sorted(frozenset().union(*(s.series for s in after)) - warm.series)}"
        f"\n  hostile calls: {sum(hostile_calls.values())},"
        f" {dict(sorted(hostile_calls.items()))}"
    )
    assert legit.ok == total_legit > 0, legit.failures[:20]
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert healthz == 200
    assert soaked.replica.process.poll() is None
    assert (peak_rss - warm.rss_kib) / 1024 <= MAX_RSS_GROWTH_MIB
    assert (last.rss_kib - warm.rss_kib) / 1024 <= MAX_RSS_KEPT_MIB
    new_series = frozenset().union(*(s.series for s in after)) - warm.series
    assert len(new_series) <= MAX_NEW_SERIES, sorted(new_series)[:20]
    assert worst_lag <= MAX_LOOP_LAG_S
    assert max(s.fds for s in after) <= warm.fds + MAX_NEW_FDS
    # the attacks were refused as they must be: nothing hostile was let through (the raw
    # calls with too much metadata carry the attacker's valid key: only the limit refuses)
    let_through = {"OK", "check:ok", "bomb:OK", "rls:OK", "raw:grpc-status=0"}
    assert not let_through & set(hostile_calls), hostile_calls
