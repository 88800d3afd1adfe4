"""The organization's bucket behind a sidecar: what one call costs with the shipped Envoy
configuration, and what the rate-limit service keeps per bucket a descriptor names."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from meshgate.v1 import options_pb2

from server.app import RunningServer
from server.backends import Backends
from storage.core.ids import new_namespace_id
from storage.tenancy.keys import KeyStore
from tests.interceptors.sidecar.conftest import MAX_BUCKETS
from tests.support.envoy import (
    Check,
    RateLimit,
    check_request,
    connection_manager,
    descriptor,
    descriptors_for,
    envoy_bootstrap,
    ok_headers,
    rate_limit_request,
)
from tests.support.tenants import MakeTenant

OK = rls_pb2.RateLimitResponse.OK
GET_CART = "/shop.v1.CartService/GetCart"  # a data-class route, as envoy.yaml's descriptors


def _remaining(answer: Any) -> int:
    added = {o.header.key: o.header.value for o in answer.ok_response.response_headers_to_add}
    return int(added["ratelimit-remaining"])


async def test_one_call_through_the_shipped_envoy_configuration_costs_one_token(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """Issue 21, item 9: Check draws from the organization's bucket, and envoy.yaml's
    rate-limit filter then sent a descriptor of the same bucket: two tokens a call, half the
    plan for sidecar traffic. Each call here is what Envoy does with the file: Check, then
    ShouldRateLimit with the descriptors its actions make of the headers Check set. The
    `slow` plan's data class leases one token at a time and hardly refills, so the
    organization's `ratelimit-remaining` (Check's answer) counts every token."""
    tenant = await make_sidecar_tenant(plan="slow")
    namespace = await tenant.namespace()
    reader = await tenant.key(options_pb2.PERMISSION_READ)
    (route,) = connection_manager(envoy_bootstrap()).route_config.virtual_hosts[0].routes
    check, limit = Check(sidecar_channel), RateLimit(sidecar_channel)
    client = {"authorization": f"Bearer {reader.secret}", "x-namespace": namespace.name}
    remaining = []
    for _ in range(4):
        answer = await check(check_request(GET_CART, client))
        assert answer.HasField("ok_response")
        remaining.append(_remaining(answer))
        descriptors = descriptors_for(route, ok_headers(answer))
        assert descriptors  # the file does ask the rate-limit service
        assert (await limit(rate_limit_request(*descriptors))).overall_code == OK
    assert [a - b for a, b in itertools.pairwise(remaining)] == [1, 1, 1]


async def test_thousands_of_descriptors_leave_the_bucket_state_at_its_cap(
    sidecar_server: RunningServer,
    sidecar_channel: grpc.aio.Channel,
    make_sidecar_tenant: MakeTenant,
    backends: Backends,
) -> None:
    """Issue 21: a descriptor's namespace_id need only have the right shape, and every bucket
    named got a lease, a name and (for a key) a cached limit, kept for good. Now each is at
    most MESHGATE_RATE_LIMIT_MAX_BUCKETS (MAX_BUCKETS on this server), the least recently
    used forgotten, and the buckets in use keep answering."""
    tenant = await make_sidecar_tenant()
    org = ("organization_id", tenant.organization_id)
    store = KeyStore(mongo=backends.mongo)
    keys = await asyncio.gather(
        *(
            store.create(
                organization_id=tenant.organization_id,
                name=f"k{i}",
                environment="development",
                permissions=frozenset({"read"}),
                namespace_ids=[],
                expires_at=None,
            )
            for i in range(MAX_BUCKETS + 40)
        )
    )
    named = [descriptor(org, ("namespace_id", new_namespace_id())) for _ in range(2000)]
    named += [descriptor(org, ("key_id", record.key_id)) for record, _ in keys]
    limit = RateLimit(sidecar_channel)
    requests = [rate_limit_request(*named[i : i + 16]) for i in range(0, len(named), 16)]
    for wave in range(0, len(requests), 10):
        answers = await asyncio.gather(*(limit(r) for r in requests[wave : wave + 10]))
        assert {a.overall_code for a in answers} == {OK}
    assert sidecar_server.components.limiter.lease_count <= MAX_BUCKETS
    assert sidecar_server.rate_limits.rate_limit.cached_bucket_names <= MAX_BUCKETS
    assert sidecar_server.rate_limits.cached_key_limits <= MAX_BUCKETS
    # the organization's own bucket still answers after all that
    assert (await limit(rate_limit_request(descriptor(org)))).overall_code == OK
