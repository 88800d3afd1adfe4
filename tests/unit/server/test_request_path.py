"""The request path as the server builds it (server/request_path.py), on in-memory stores:
whole calls through the chain, in-process, in the order docs/design.md gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest

from calls.state import current_call
from interceptors.audit import AuditTrail
from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.availability import StoreAvailability
from interceptors.credits import Credits
from interceptors.identity import OrganizationIdentity
from interceptors.namespace import NamespaceScope
from interceptors.peer import PeerIdentity
from interceptors.rate_limit import RateLimit
from interceptors.telemetry import Telemetry
from interceptors.usage import UsageObserver
from tests.support.request_path import PathOnFakes, call_through

GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
GET_DOCUMENT = "/meshgate.v1.DocumentService/GetDocument"  # read, cost 1, namespaced
CREATE_DOCUMENT = "/meshgate.v1.DocumentService/CreateDocument"  # write, audited


async def served(request: Any, context: Any) -> bytes:
    """The servicer: answers with who called, as the call state tells it."""
    call = current_call.get()
    principal = call.require_principal()
    return principal.organization.organization_id.encode()


def never_decoded(raw: bytes) -> Any:
    raise AssertionError("the request was decoded before the call was admitted")


def test_the_steps_and_observers_in_their_order() -> None:
    path = PathOnFakes.create().path
    assert [type(step) for step in path.steps] == [
        PeerIdentity,
        StoreAvailability,
        Authentication,
        OrganizationIdentity,
        Authorization,
        NamespaceScope,
        RateLimit,
        Credits,
        AuditTrail,
    ]
    assert [type(o) for o in path.observers] == [Telemetry, UsageObserver, AuditTrail]
    assert path.rate_limit is path.steps[6]
    assert id(path.observers[2]) == id(path.steps[8])  # one audit trail: step and observer


async def test_an_admitted_call_is_answered_counted_and_limited() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()
    outcome = await call_through(
        fakes.chain(), GET_ORG, handler=served, metadata=tenant.metadata(namespace=False)
    )
    assert outcome.code is grpc.StatusCode.OK
    assert outcome.response == tenant.organization.organization_id.encode()
    assert outcome.trailing["x-request-id"]
    assert int(outcome.trailing["ratelimit-remaining"]) >= 0
    await fakes.usage.flush()
    rows = await fakes.usage.query(
        organization_id=tenant.organization.organization_id,
        environment="development",
        only_namespaces=frozenset(),
        start=datetime.now(UTC) - timedelta(hours=2),
        end=datetime.now(UTC) + timedelta(hours=1),
        group_by=("method",),
    )
    assert [(r.method, r.calls, r.by_status) for r in rows] == [(GET_ORG, 1, {"OK": 1})]
    assert fakes.audit.depth == 0  # a read is not audited


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (
            (("authorization", "Bearer mg_dev_" + "A" * 40 + "_abcdef"),),
            grpc.StatusCode.UNAUTHENTICATED,
        ),
        ((("authorization", "Basic xyz"),), grpc.StatusCode.UNAUTHENTICATED),
    ],
)
async def test_a_caller_without_a_valid_key_never_reaches_the_body(
    headers: tuple[tuple[str, str], ...], code: grpc.StatusCode
) -> None:
    fakes = PathOnFakes.create()
    outcome = await call_through(
        fakes.chain(), GET_DOCUMENT, b"\xff", handler=served, metadata=headers, decode=never_decoded
    )
    assert outcome.code is code
    assert outcome.trailing["x-request-id"]


async def test_a_namespaced_call_names_its_namespace() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()
    outcome = await call_through(
        fakes.chain(), GET_DOCUMENT, handler=served, metadata=tenant.metadata(namespace=False)
    )
    assert outcome.code is grpc.StatusCode.INVALID_ARGUMENT and "x-namespace" in outcome.details
    other = await fakes.tenant()
    foreign = (*tenant.metadata(namespace=False), ("x-namespace", other.namespace.namespace_id))
    outcome = await call_through(fakes.chain(), GET_DOCUMENT, handler=served, metadata=foreign)
    assert outcome.code is grpc.StatusCode.NOT_FOUND
    outcome = await call_through(
        fakes.chain(), GET_DOCUMENT, handler=served, metadata=tenant.metadata()
    )
    assert outcome.code is grpc.StatusCode.OK


async def test_a_key_short_of_the_permission_is_denied_and_audited() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant(permissions=("read",))
    outcome = await call_through(
        fakes.chain(), CREATE_DOCUMENT, handler=served, metadata=tenant.metadata()
    )
    assert outcome.code is grpc.StatusCode.PERMISSION_DENIED and "WRITE" in outcome.details
    await fakes.audit.flush()
    events, _ = await fakes.audit.list_page(
        organization_id=tenant.organization.organization_id,
        environment="development",
        only_namespaces=frozenset(),
        filters={},
        start=None,
        end=None,
        page_size=10,
        page_token="",
    )
    assert [(e["method"], e["outcome"], e["actor_key_id"]) for e in events] == [
        (CREATE_DOCUMENT, "PERMISSION_DENIED", tenant.key_id)
    ]


async def test_credits_are_debited_and_refused_when_short() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant(plan="free")
    allowance = fakes.plan_of("free").monthly_credits
    await fakes.accounts.debit(
        tenant.organization.organization_id, allowance - 1, allowance=allowance
    )
    chain = fakes.chain()
    first = await call_through(chain, GET_DOCUMENT, handler=served, metadata=tenant.metadata())
    assert first.code is grpc.StatusCode.OK
    assert fakes.accounts.spent(tenant.organization.organization_id) == 1
    refused = await call_through(chain, GET_DOCUMENT, handler=served, metadata=tenant.metadata())
    assert refused.code is grpc.StatusCode.RESOURCE_EXHAUSTED and "credits" in refused.details
    assert "retry-after" in refused.trailing


async def test_a_call_needing_a_store_that_is_down_fails_fast() -> None:
    fakes = PathOnFakes.create()
    tenant = await fakes.tenant()
    fakes.breakers["mongodb"].trip("AutoReconnect")
    try:
        outcome = await call_through(
            fakes.chain(), GET_ORG, handler=served, metadata=tenant.metadata()
        )
        assert outcome.code is grpc.StatusCode.UNAVAILABLE
        assert "retry-after" in outcome.trailing
    finally:
        await fakes.breakers.close()


async def test_a_method_without_a_policy_is_refused() -> None:
    fakes = PathOnFakes.create()
    outcome = await call_through(fakes.chain(), "/test.v1.Undeclared/Do", handler=served)
    assert outcome.code is grpc.StatusCode.PERMISSION_DENIED
    assert "declares no access policy" in outcome.details
