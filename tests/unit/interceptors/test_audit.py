"""Step 10 and observer, audit, in-process: audited calls refused up front when the queue
is full; one event per audited call and per denial, none for limits."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.audit import AuditTrail, audited
from storage.core.errors import UnavailableError
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization
from tests.support.fakes import FakeAuditLog
from tests.support.request_path import Context, call_state

ORGANIZATION = "org_" + "o" * 20
KEY = VerifiedKey(
    "key_" + "k" * 20, ORGANIZATION, "development", frozenset({"admin"}), frozenset(), None
)
WRITE = Policy(access=Access.API_KEY, permission="write", audit=True)
READ = Policy(access=Access.API_KEY, permission="read")


class Request:
    document_id = "doc-7"


def finished(
    policy: Policy, code: grpc.StatusCode, *, admitted: bool, known: bool = True
) -> CallState:
    call = call_state(
        policy, method="/meshgate.v1.DocumentService/CreateDocument", peer_identity="spiffe://x/y"
    )
    if known:
        call.principal = Principal(
            KEY, Organization("internal", ORGANIZATION, "acme", "pro", datetime.now(UTC))
        )
    call.code, call.admitted, call.request = code, admitted, Request()
    return call


async def events(log: FakeAuditLog) -> list[dict[str, Any]]:
    await log.flush()
    items, _ = await log.list_page(
        organization_id=ORGANIZATION,
        environment="development",
        only_namespaces=frozenset(),
        filters={},
        start=None,
        end=None,
        page_size=100,
        page_token="",
    )
    return items


async def test_audited_calls_and_denials_become_events() -> None:
    log = FakeAuditLog()
    trail = AuditTrail(log=log)
    trail.finish(finished(WRITE, grpc.StatusCode.OK, admitted=True), 0.01)
    trail.finish(finished(READ, grpc.StatusCode.OK, admitted=True), 0.01)  # a read: not audited
    trail.finish(finished(READ, grpc.StatusCode.PERMISSION_DENIED, admitted=False), 0.01)
    trail.finish(finished(READ, grpc.StatusCode.RESOURCE_EXHAUSTED, admitted=False), 0.01)
    trail.finish(
        finished(WRITE, grpc.StatusCode.UNAUTHENTICATED, admitted=False, known=False), 0.01
    )
    written = await events(log)
    assert [(e["outcome"], e["resource"], e["actor_peer"]) for e in written] == [
        ("PERMISSION_DENIED", "doc-7", "spiffe://x/y"),
        ("OK", "doc-7", "spiffe://x/y"),
    ]
    assert {e["actor_key_id"] for e in written} == {KEY.key_id}


async def test_a_key_refused_for_its_peer_joins_its_organizations_chain() -> None:
    log = FakeAuditLog()
    call = finished(READ, grpc.StatusCode.UNAUTHENTICATED, admitted=False, known=False)
    call.refused_key = KEY
    AuditTrail(log=log).finish(call, 0.01)
    assert [(e["outcome"], e["actor_key_id"]) for e in await events(log)] == [
        ("UNAUTHENTICATED", KEY.key_id)
    ]


def test_a_full_queue_refuses_audited_calls_up_front() -> None:
    log = FakeAuditLog(max_queue=1)
    trail = AuditTrail(log=log)
    trail.check(finished(WRITE, grpc.StatusCode.OK, admitted=False), Context())
    trail.finish(finished(WRITE, grpc.StatusCode.OK, admitted=True), 0.01)
    with pytest.raises(UnavailableError, match="audit"):
        trail.check(finished(WRITE, grpc.StatusCode.OK, admitted=False), Context())
    assert audited(WRITE) and audited(Policy(access=Access.API_KEY, permission="delete"))
    assert not audited(READ)
