"""The usage observer, in-process: every finished call of a known caller is counted; a
debit whose call failed on the server's side is refunded, anything else is charged."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.usage import UsageObserver
from storage.metering.usage import UNATTRIBUTED
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.namespaces import Namespace
from storage.tenancy.organizations import Organization
from tests.support.fakes import FakeCreditAccounts, FakeUsage
from tests.support.request_path import call_state

GET = Policy(access=Access.API_KEY, permission="read", cost=3, namespaced=True)
ORGANIZATION = "org_" + "o" * 20


async def finished(
    code: grpc.StatusCode, *, debited: bool = True
) -> tuple[FakeUsage, FakeCreditAccounts, CallState]:
    usage, accounts = FakeUsage(), FakeCreditAccounts()
    call = call_state(GET, method="/meshgate.v1.DocumentService/GetDocument")
    key = VerifiedKey(
        "key_" + "k" * 20, ORGANIZATION, "development", frozenset({"read"}), frozenset(), None
    )
    call.principal = Principal(
        key, Organization("internal", ORGANIZATION, "acme", "pro", datetime.now(UTC))
    )
    call.namespace = Namespace(
        "ns_" + "n" * 20, "internal", "orders", "development", datetime.now(UTC)
    )
    if debited:
        await accounts.debit(ORGANIZATION, 3, allowance=100, at=call.started_at)
        call.credits = 3
    call.code = code
    UsageObserver(usage=usage, accounts=accounts).finish(call, 0.01)
    await usage.flush()
    return usage, accounts, call


async def counted(usage: FakeUsage) -> list[tuple[str | None, int, int, dict[str, int]]]:
    now = datetime.now(UTC)
    rows = await usage.query(
        organization_id=ORGANIZATION,
        environment="development",
        only_namespaces=frozenset(),
        start=now - timedelta(hours=2),
        end=now + timedelta(hours=1),
        group_by=("namespace",),
    )
    return [(r.namespace_id, r.calls, r.credits, r.by_status) for r in rows]


@pytest.mark.parametrize(
    "code", [grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT]
)
async def test_a_call_the_caller_asked_for_is_charged(code: grpc.StatusCode) -> None:
    usage, accounts, _ = await finished(code)
    assert await counted(usage) == [("ns_" + "n" * 20, 1, 3, {code.name: 1})]
    assert accounts.spent(ORGANIZATION) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE])
async def test_a_failure_on_the_servers_side_is_refunded(code: grpc.StatusCode) -> None:
    usage, accounts, _ = await finished(code)
    assert await counted(usage) == [("ns_" + "n" * 20, 1, 0, {code.name: 1})]
    assert accounts.spent(ORGANIZATION) == 0
    # the refund is available again: the whole allowance can still be debited
    await accounts.debit(ORGANIZATION, 100, allowance=100)


async def test_a_call_without_a_known_key_is_counted_for_no_organization() -> None:
    """Its key is unknown: counted unattributed (organization and key ""), never under
    anything the caller sent, and without credits."""
    usage = FakeUsage()
    call = call_state(GET, metadata={"authorization": "Bearer mg_dev_made_up"})
    call.code = grpc.StatusCode.UNAUTHENTICATED
    UsageObserver(usage=usage, accounts=FakeCreditAccounts()).finish(call, 0.01)
    (batch,) = await usage.flush()
    assert batch.credits == {}
    rows = await usage.query(
        organization_id=UNATTRIBUTED,
        environment="",
        only_namespaces=frozenset(),
        start=datetime(2000, 1, 1, tzinfo=UTC),
        end=datetime(2100, 1, 1, tzinfo=UTC),
        group_by=("key", "outcome"),
    )
    assert [(r.key_id, r.outcome, r.calls) for r in rows] == [(UNATTRIBUTED, "UNAUTHENTICATED", 1)]
    assert not UsageObserver.observes(Policy(access=Access.PUBLIC))
