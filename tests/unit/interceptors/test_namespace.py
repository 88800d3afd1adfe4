"""Step 7, namespace, in-process: `x-namespace` resolved inside the caller's organization
and environment; a key's allow-list narrows it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.namespace import NamespaceScope
from storage.core.errors import InvalidArgumentError, NotFoundError, PermissionDeniedError
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.namespaces import Namespace
from storage.tenancy.organizations import Organization
from tests.support.fakes import FakeNamespaces
from tests.support.request_path import Context, call_state

NAMESPACED = Policy(access=Access.API_KEY, permission="read", namespaced=True)


def caller(
    internal_id: str, reference: str | None, *, allowed: frozenset[str] = frozenset()
) -> CallState:
    call = call_state(NAMESPACED, metadata={} if reference is None else {"x-namespace": reference})
    key = VerifiedKey(
        key_id="key_" + "k" * 20,
        organization_id="org_" + "o" * 20,
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=allowed,
        valid_until=None,
    )
    organization = Organization(internal_id, "org_" + "o" * 20, "acme", "pro", datetime.now(UTC))
    call.principal = Principal(key=key, organization=organization)
    return call


async def scope(step: NamespaceScope, call: CallState) -> Namespace:
    pending = step.check(call, Context())
    if pending is not None:
        await pending
    return call.require_namespace()


async def test_a_namespace_by_id_or_name_then_from_the_cache() -> None:
    namespaces = FakeNamespaces()
    orders = await namespaces.create(internal_id="org-a", name="orders", environment="development")
    step = NamespaceScope(namespaces=namespaces)
    for reference in (orders.namespace_id, " orders "):
        assert (await scope(step, caller("org-a", reference))).namespace_id == orders.namespace_id
    assert step.check(caller("org-a", "orders"), Context()) is None  # cached: no I/O


@pytest.mark.parametrize("reference", [None, "", "   "])
def test_a_namespaced_method_needs_the_header(reference: str | None) -> None:
    with pytest.raises(InvalidArgumentError, match="x-namespace"):
        NamespaceScope(namespaces=FakeNamespaces()).check(caller("org-a", reference), Context())


async def test_other_organizations_and_environments_look_like_nothing() -> None:
    namespaces = FakeNamespaces()
    theirs = await namespaces.create(internal_id="org-b", name="orders", environment="development")
    prod = await namespaces.create(internal_id="org-a", name="live", environment="production")
    step = NamespaceScope(namespaces=namespaces)
    for reference in (theirs.namespace_id, prod.namespace_id, "live", "ns_" + "x" * 20):
        with pytest.raises(NotFoundError, match="namespace not found"):
            await scope(step, caller("org-a", reference))


async def test_a_key_restricted_to_other_namespaces_is_denied() -> None:
    namespaces = FakeNamespaces()
    orders = await namespaces.create(internal_id="org-a", name="orders", environment="development")
    billing = await namespaces.create(
        internal_id="org-a", name="billing", environment="development"
    )
    step = NamespaceScope(namespaces=namespaces)
    allowed = frozenset({billing.namespace_id})
    with pytest.raises(PermissionDeniedError, match="may not act in that namespace"):
        await scope(step, caller("org-a", orders.namespace_id, allowed=allowed))
    assert (await scope(step, caller("org-a", "billing", allowed=allowed))) == billing
    assert NamespaceScope.applies(NAMESPACED)
    assert not NamespaceScope.applies(Policy(access=Access.API_KEY, permission="read"))
