"""Step 5, identity, in-process: the key's organization resolved (cached after one read)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calls.policy import Access, Policy
from interceptors.identity import OrganizationIdentity
from storage.core.errors import UnauthenticatedError
from storage.tenancy.key_verifier import VerifiedKey
from tests.support.fakes import FakeOrganizations
from tests.support.request_path import Context, call_state

READ = Policy(access=Access.API_KEY, permission="read")


def key_of(organization_id: str) -> VerifiedKey:
    return VerifiedKey(
        key_id="key_" + "k" * 20,
        organization_id=organization_id,
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=frozenset(),
        valid_until=datetime(2040, 1, 1, tzinfo=UTC),
    )


async def test_the_organization_is_read_once_then_known_without_io() -> None:
    organizations = FakeOrganizations()
    acme = await organizations.create(name="acme", plan="pro")
    identity = OrganizationIdentity(organizations=organizations)
    first = call_state(READ)
    first.key = key_of(acme.organization_id)
    pending = identity.check(first, Context())
    assert pending is not None
    await pending
    assert (
        first.principal is not None and first.principal.organization.internal_id == acme.internal_id
    )
    again = call_state(READ)
    again.key = key_of(acme.organization_id)
    assert identity.check(again, Context()) is None
    assert again.principal is not None and again.principal.key == again.key


async def test_a_key_whose_organization_is_gone_is_unauthenticated() -> None:
    identity = OrganizationIdentity(organizations=FakeOrganizations())
    call = call_state(READ)
    call.key = key_of("org_" + "z" * 20)
    with pytest.raises(UnauthenticatedError):
        pending = identity.check(call, Context())
        assert pending is not None
        await pending
    assert call.principal is None


def test_a_call_without_a_key_is_left_alone() -> None:
    call = call_state(READ)
    assert OrganizationIdentity(organizations=FakeOrganizations()).check(call, Context()) is None
    assert call.principal is None
    assert not OrganizationIdentity.applies(Policy(access=Access.PUBLIC))
