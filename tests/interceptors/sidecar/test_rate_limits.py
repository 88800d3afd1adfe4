"""Envoy rate-limit service v3 `ShouldRateLimit`: descriptors limited by meshgate's own buckets.

The `tiny` plan (conftest.py) gives the admin class a burst of 3 refilled once in 100 s,
so what is spent in a test stays spent.
"""

from __future__ import annotations

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from meshgate.v1 import key_service_pb2, options_pb2

from storage.core.ids import new_organization_id
from tests.support.clients import auth, rpc_error
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.tenants import ENV_PROTO, MakeTenant

OK = rls_pb2.RateLimitResponse.OK
OVER = rls_pb2.RateLimitResponse.OVER_LIMIT
HOUR = rls_pb2.RateLimitResponse.RateLimit.HOUR


def admin_class(organization_id: str, *more: tuple[str, str], hits: int | None = None) -> object:
    return descriptor(
        ("organization_id", organization_id), ("rate_class", "admin"), *more, hits_addend=hits
    )


async def test_an_organization_descriptor_counts_down_and_then_is_over_limit(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant(plan="tiny")
    limit = RateLimit(sidecar_channel)
    request = rate_limit_request(admin_class(tenant.organization_id))
    answers = [await limit(request) for _ in range(4)]
    assert [a.overall_code for a in answers] == [OK, OK, OK, OVER]
    first = answers[0].statuses[0]
    assert first.code == OK
    # 0.01 per second is no whole number per second or minute: 36 per hour
    assert (first.current_limit.requests_per_unit, first.current_limit.unit) == (36, HOUR)
    assert first.limit_remaining <= 2
    assert first.duration_until_reset.ToNanoseconds() > 0
    over = answers[-1]
    assert over.statuses[0].code == OVER
    assert over.statuses[0].limit_remaining == 0
    headers = {h.key: h.value for h in over.response_headers_to_add}
    assert headers["ratelimit-limit"] == "3"
    assert headers["ratelimit-remaining"] == "0"
    assert int(headers["retry-after"]) >= 1


async def test_check_and_should_rate_limit_draw_from_the_same_bucket(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """Two Checks on an admin-class route, then the rate-limit service has one token left for
    the organization's admin class; after it, Check is refused too."""
    tenant = await make_sidecar_tenant(plan="tiny")
    check = Check(sidecar_channel)
    route = check_request(
        "/shop.v1.AdminService/Reindex", {"authorization": f"Bearer {tenant.admin}"}
    )
    assert (await check(route)).HasField("ok_response")
    assert (await check(route)).HasField("ok_response")
    limit = RateLimit(sidecar_channel)
    request = rate_limit_request(admin_class(tenant.organization_id))
    assert (await limit(request)).overall_code == OK
    assert (await limit(request)).overall_code == OVER
    assert (await check(route)).denied_response.status.code == 429


async def test_hits_addend_is_honoured_and_bounded(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant(plan="tiny")
    limit = RateLimit(sidecar_channel)
    three = rate_limit_request(admin_class(tenant.organization_id), hits_addend=3)
    assert (await limit(three)).overall_code == OK
    one = rate_limit_request(admin_class(tenant.organization_id))
    assert (await limit(one)).overall_code == OVER
    other = await make_sidecar_tenant(plan="tiny")
    # a descriptor's own hits_addend wins over the request's
    own = rate_limit_request(admin_class(other.organization_id, hits=4), hits_addend=1)
    assert (await limit(own)).overall_code == OVER
    error = await rpc_error(limit(rate_limit_request(admin_class(other.organization_id, hits=101))))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "hits_addend may be at most 100" in (error.details() or "")


async def test_namespace_and_key_descriptors_have_buckets_of_their_own(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant(plan="tiny")
    # both are admin-class calls: the organization's admin bucket has 1 token left after them
    namespace = await tenant.namespace()
    narrow = await tenant.keys.CreateKey(
        key_service_pb2.CreateKeyRequest(
            name="narrow",
            environment=ENV_PROTO["development"],
            permissions=[options_pb2.PERMISSION_READ],
            rate_limit=key_service_pb2.RateLimit(per_second=0.01, burst=1),
        ),
        metadata=auth(tenant.admin),
    )
    limit = RateLimit(sidecar_channel)
    org = rate_limit_request(admin_class(tenant.organization_id))
    assert [(await limit(org)).overall_code for _ in range(2)] == [OK, OVER]
    in_namespace = rate_limit_request(
        admin_class(tenant.organization_id, ("namespace_id", namespace.namespace_id)),
        hits_addend=3,
    )
    assert (await limit(in_namespace)).overall_code == OK
    # a key's own limit narrows the plan's, as on direct calls: 1 token here
    by_key = rate_limit_request(admin_class(tenant.organization_id, ("key_id", narrow.key.key_id)))
    answers = [await limit(by_key) for _ in range(2)]
    assert [a.overall_code for a in answers] == [OK, OVER]
    assert answers[0].statuses[0].current_limit.requests_per_unit == 36


async def test_unknown_organizations_and_revoked_keys_are_over_limit(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """Fail closed: a descriptor nobody owns admits nothing."""
    tenant = await make_sidecar_tenant()
    key = await tenant.key()
    await tenant.keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=key.key.key_id), metadata=auth(tenant.admin)
    )
    limit = RateLimit(sidecar_channel)
    unknown = rate_limit_request(descriptor(("organization_id", new_organization_id())))
    revoked = rate_limit_request(
        descriptor(("organization_id", tenant.organization_id), ("key_id", key.key.key_id))
    )
    for request in (unknown, revoked):
        answer = await limit(request)
        assert answer.overall_code == OVER
        assert answer.statuses[0].code == OVER


async def test_malformed_descriptors_are_invalid_argument(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """A typo in Envoy's configuration must not silently turn a limit off."""
    tenant = await make_sidecar_tenant()
    org = ("organization_id", tenant.organization_id)
    limit = RateLimit(sidecar_channel)
    for bad in (
        descriptor(("organisation_id", tenant.organization_id)),
        descriptor(("rate_class", "data")),
        descriptor(org, ("rate_class", "bulk")),
        descriptor(org, org),
        descriptor(org, ("namespace_id", "default")),
    ):
        error = await rpc_error(limit(rate_limit_request(bad)))
        assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    error = await rpc_error(limit(rate_limit_request()))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_callers_not_on_the_sidecar_allow_list_cannot_ask(
    direct_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    tenant = await make_sidecar_tenant()
    request = rate_limit_request(descriptor(("organization_id", tenant.organization_id)))
    error = await rpc_error(RateLimit(direct_channel)(request))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED


async def test_at_most_sixteen_descriptors_per_request(
    sidecar_channel: grpc.aio.Channel, make_sidecar_tenant: MakeTenant
) -> None:
    """With at most 100 hits each, one request draws at most 1,600 tokens."""
    tenant = await make_sidecar_tenant()
    one = descriptor(("organization_id", tenant.organization_id))
    limit = RateLimit(sidecar_channel)
    assert (await limit(rate_limit_request(*[one] * 16))).overall_code == OK
    error = await rpc_error(limit(rate_limit_request(*[one] * 17)))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "at most 16 descriptors per request"
