"""Rate limits through the real server and a real redis-server (credits: test_credits.py,
usage: test_usage.py)."""

from __future__ import annotations

import contextlib
import math
import time

import grpc
import pytest
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    key_service_pb2,
    options_pb2,
)

from tests.support.clients import auth
from tests.support.error_details import details_of
from tests.support.tenants import GET_ORG, MakeTenant, Tenant, burst_calls, org_stub


async def test_every_response_carries_ratelimit_headers(make_tenant: MakeTenant) -> None:
    tenant: Tenant = await make_tenant(plan="free")
    call = org_stub(tenant).GetOrganization(GET_ORG, metadata=auth(tenant.admin))
    await call
    assert tuple(await call.initial_metadata()) == ()  # a unary call: all of it in the trailers
    headers = dict(await call.trailing_metadata())
    # free plan, metadata class: 20/s, burst 40; the organization's first call of that class
    assert (headers["ratelimit-limit"], headers["ratelimit-remaining"]) == ("40", "39")
    assert headers["ratelimit-reset"] == "1"  # one token short of full: 1/20 s, in whole seconds
    # an application error carries them too
    docs = document_service_pb2_grpc.DocumentServiceStub(tenant.channel)
    ns = await tenant.namespace()
    refused = docs.GetDocument(
        document_service_pb2.GetDocumentRequest(document_id="nope"),
        metadata=auth(tenant.admin, ns.name),
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await refused
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert "ratelimit-remaining" in dict(await refused.trailing_metadata())
    assert tuple(await refused.initial_metadata()) == ()


async def test_remaining_falls_by_one_per_call_and_reset_is_the_time_to_refill(
    tenant: Tenant,
) -> None:
    """A bucket of 10 refilling at 0.1/s (a key's own): each call spends one token, and the
    reset is how long the bucket takes to fill up again, in whole seconds."""
    rate, burst = 0.1, 10
    slow = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="slow",
            environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=rate, burst=burst),
        ),
        metadata=auth(tenant.admin),
    )
    remaining: list[int] = []
    for _ in range(5):
        call = org_stub(tenant).GetOrganization(GET_ORG, metadata=auth(slow.secret))
        await call
        headers = dict(await call.trailing_metadata())
        assert headers["ratelimit-limit"] == str(burst)
        left, reset = int(headers["ratelimit-remaining"]), int(headers["ratelimit-reset"])
        refill_s = (burst - left) / rate
        assert refill_s <= reset < refill_s + 1, (left, reset)
        assert reset <= burst / rate  # never longer than filling an empty bucket
        remaining.append(left)
    assert remaining == [9, 8, 7, 6, 5]


async def test_exhausted_limit_is_resource_exhausted_with_retry_info(
    make_tenant: MakeTenant,
) -> None:
    tenant: Tenant = await make_tenant(plan="free")
    calls = await burst_calls(tenant, tenant.admin, 50)
    codes = [await c.code() for c in calls]
    assert codes.count(grpc.StatusCode.OK) >= 40
    refused = [
        c
        for c, code in zip(calls, codes, strict=True)
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED
    ]
    assert refused, codes
    trailers = dict(await refused[0].trailing_metadata())
    assert int(trailers["retry-after"]) >= 1
    details = details_of(trailers.items())
    assert details.reason == "RATE_LIMITED" and details.error_info.domain == "meshgate"
    assert details.error_info.metadata["rate_class"] == "metadata"
    assert details.retry_info is not None and details.quota_failure is not None
    assert 0 < details.retry_info.retry_delay.ToNanoseconds() <= 1_000_000_000
    assert [v.subject for v in details.quota_failure.violations] == ["rate_class:metadata"]
    assert "rate limit exceeded for metadata calls" in (await refused[0].details() or "")
    assert trailers["ratelimit-remaining"] == "0"
    # other route classes have their own buckets
    await tenant.keys.ListKeys(key_service_pb2.ListKeysRequest(), metadata=auth(tenant.admin))


async def test_plans_are_independent(make_tenant: MakeTenant) -> None:
    free: Tenant = await make_tenant(plan="free")
    pro: Tenant = await make_tenant(plan="pro")
    await burst_calls(free, free.admin, 45)
    calls = await burst_calls(pro, pro.admin, 45)  # pro: burst 400
    assert [await c.code() for c in calls] == [grpc.StatusCode.OK] * 45


async def test_per_key_override(make_tenant: MakeTenant) -> None:
    tenant: Tenant = await make_tenant(plan="pro")
    created = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="slow",
            environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=0.5, burst=2),
        ),
        metadata=auth(tenant.admin),
    )
    assert created.key.rate_limit.burst == 2
    codes = [await c.code() for c in await burst_calls(tenant, created.secret, 4)]
    assert codes == [grpc.StatusCode.OK] * 2 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 2
    # the organization's bucket gave the key's two admitted calls, and has plenty left
    assert [await c.code() for c in await burst_calls(tenant, tenant.admin, 3)] == [
        grpc.StatusCode.OK
    ] * 3
    for bad in (
        key_service_pb2.RateLimit(per_second=0, burst=1),
        key_service_pb2.RateLimit(per_second=1, burst=-1),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await tenant.keys.CreateKey(
                key_service_pb2.CreateKeyRequest(
                    name="bad",
                    environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                    permissions=[options_pb2.PERMISSION_READ],
                    rate_limit=bad,
                ),
                metadata=auth(tenant.admin),
            )
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_keys_own_limit_only_narrows_the_plan(make_tenant: MakeTenant) -> None:
    """The review's reproduction: on the free plan (metadata bucket 40, 20/s) a key with a
    generous limit of its own got 120 of 120 calls through. Now its limit is the smaller of
    its own and the plan's, and its calls draw from the organization's bucket too, so two
    such keys together stay within the plan."""
    tenant: Tenant = await make_tenant(plan="free")
    generous = key_service_pb2.RateLimit(per_second=1000, burst=1000)
    secrets = []
    for name in ("generous-1", "generous-2"):
        created = await tenant.keys.CreateKey(
            key_service_pb2.CreateKeyRequest(
                name=name,
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                permissions=[options_pb2.PERMISSION_READ],
                rate_limit=generous,
            ),
            metadata=auth(tenant.admin),
        )
        secrets.append(created.secret)
    started = time.monotonic()  # before the first call: it takes a token too
    first = org_stub(tenant).GetOrganization(GET_ORG, metadata=auth(secrets[0]))
    await first
    assert dict(await first.trailing_metadata())["ratelimit-limit"] == "40"  # not 1000
    codes = [await first.code()]
    for i in range(119):
        call = org_stub(tenant).GetOrganization(GET_ORG, metadata=auth(secrets[i % 2]))
        with contextlib.suppress(grpc.aio.AioRpcError):
            await call
        codes.append(await call.code())
    elapsed = time.monotonic() - started
    admitted = codes.count(grpc.StatusCode.OK)
    assert admitted <= 40 + 20 * elapsed, (admitted, elapsed)
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes


@pytest.mark.parametrize(
    ("per_second", "burst"),
    [
        (1e-300, 1),  # overflowed the bucket's expiry in Redis
        (1e-9, 1_000_000),
        (0.0009, 1),  # below 0.001/s
        (math.inf, 1),
        (math.nan, 1),
        (2_000_000, 1),  # above 1,000,000/s
        (1, 1_000_001),  # burst above 1,000,000
        (1, 0),
        (0.001, 605),  # an empty bucket would take more than 7 days to refill
    ],
)
async def test_a_keys_rate_limit_is_bounded(tenant: Tenant, per_second: float, burst: int) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await tenant.keys.CreateKey(
            key_service_pb2.CreateKeyRequest(
                name="extreme",
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                permissions=[options_pb2.PERMISSION_READ],
                rate_limit=key_service_pb2.RateLimit(per_second=per_second, burst=burst),
            ),
            metadata=auth(tenant.admin),
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (info.value.details() or "").startswith("rate_limit: ")


async def test_the_bounds_themselves_are_accepted(tenant: Tenant) -> None:
    for per_second, burst in ((0.001, 604), (1_000_000, 1_000_000)):
        created = await tenant.keys.CreateKey(
            key_service_pb2.CreateKeyRequest(
                name="edge",
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                permissions=[options_pb2.PERMISSION_READ],
                rate_limit=key_service_pb2.RateLimit(per_second=per_second, burst=burst),
            ),
            metadata=auth(tenant.admin),
        )
        assert created.key.rate_limit.burst == burst
