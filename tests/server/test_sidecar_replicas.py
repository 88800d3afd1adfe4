"""Check and ShouldRateLimit across three `meshgate serve` replicas sharing one Redis: one
organization's bucket is one bucket, whichever replica a sidecar asks and whichever of the
two services it asks (the bound of storage/metering/rate_limiter.py: no overshoot, at most
2 x replicas x lease short)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2

from server.backends import Backends
from server.bootstrap import bootstrap
from server.settings import Settings
from tests.support.clients import client_credentials
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.log_guard import NEVER_LOGGED
from tests.support.pki import PROXY_ID, Pki
from tests.support.processes import Replica, start_replicas, stop_replicas

pytestmark = pytest.mark.slow

BURST = 20
LEASE = 1  # storage.metering.rate_limiter.lease_size for 0.01/s, burst 20
REPLICAS = 3
PLANS = {
    "sidecar": {
        "monthly_credits": 1_000_000,
        "limits": {
            "metadata": {"per_second": 100, "burst": 100},
            "data": {"per_second": 100, "burst": 100},
            "search": {"per_second": 100, "burst": 100},
            "admin": {"per_second": 0.01, "burst": BURST},
        },
    }
}
ROUTES = {"routes": [{"grpc": "/shop.v1.AdminService/*", "permission": "read",
                      "rate_class": "admin"}]}  # fmt: skip


@pytest.fixture(scope="module")
def sidecar_fleet(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[Replica]]:
    workdir: Path = tmp_path_factory.mktemp("sidecar-fleet")
    (workdir / "plans.json").write_text(json.dumps(PLANS))
    (workdir / "routes.yaml").write_text(yaml.safe_dump(ROUTES))
    bindings = {"sidecars": [{"identity": PROXY_ID, "organizations": "*", "principals": "*"}]}
    (workdir / "bindings.yaml").write_text(yaml.safe_dump(bindings))
    replicas = start_replicas(
        REPLICAS,
        settings,
        pki,
        workdir,
        MESHGATE_PLANS_FILE=str(workdir / "plans.json"),
        MESHGATE_DEFAULT_PLAN="sidecar",
        MESHGATE_ROUTE_POLICY_FILE=str(workdir / "routes.yaml"),
        MESHGATE_EXT_AUTHZ_PEERS=PROXY_ID,
        MESHGATE_EXT_AUTHZ_BINDINGS_FILE=str(workdir / "bindings.yaml"),
        MESHGATE_LIMITER_TIMEOUT_S="0.5",
    )
    yield replicas
    stop_replicas(replicas)


async def test_check_and_should_rate_limit_share_one_bucket_across_replicas(
    sidecar_fleet: list[Replica], pki: Pki, backends: Backends
) -> None:
    result = await bootstrap(backends, name="sidecars", plan="sidecar", environment="development")
    NEVER_LOGGED.add(result.secret)
    channels = [
        grpc.aio.secure_channel(r.target, client_credentials(pki, "proxy")) for r in sidecar_fleet
    ]
    check_call = check_request(
        "/shop.v1.AdminService/Reindex", {"authorization": f"Bearer {result.secret}"}
    )
    limit_call = rate_limit_request(
        descriptor(("organization_id", result.organization_id), ("rate_class", "admin"))
    )
    admitted: Counter[str] = Counter()
    refused: Counter[str] = Counter()

    async def ask(index: int) -> None:
        channel = channels[index % REPLICAS]
        if index % 2:
            answer = await RateLimit(channel)(limit_call)
            ok = answer.overall_code == rls_pb2.RateLimitResponse.OK
            kind = "rls"
        else:
            response = await Check(channel)(check_call)
            ok = response.HasField("ok_response")
            if not ok:
                assert response.denied_response.status.code == 429
            kind = "check"
        (admitted if ok else refused)[f"{kind}@{index % REPLICAS}"] += 1

    try:
        # six waves of ten concurrent questions, spread over the replicas and both services
        for wave in range(6):
            await asyncio.gather(*(ask(wave * 10 + i) for i in range(10)))
    finally:
        for channel in channels:
            await channel.close(None)
    total = sum(admitted.values())
    # never more than one bucket holds (the refill over the test is well under a token)
    assert total <= BURST + 1, admitted
    # and at most two leases per replica short of it
    assert total >= BURST - 2 * REPLICAS * LEASE, admitted
    assert sum(refused.values()) == 60 - total
    assert {k.split("@")[0] for k in admitted} == {"check", "rls"}, admitted
