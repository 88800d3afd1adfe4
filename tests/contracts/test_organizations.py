"""What the identity step reads: `OrganizationStore` (MongoDB) and `FakeOrganizations`."""

from __future__ import annotations

from datetime import timedelta

import pytest

from server.backends import Backends
from storage.core.errors import NotFoundError
from storage.tenancy.organizations import OrganizationStore
from tests.support.fakes import FakeOrganizations
from tests.support.metering import new_organization_id
from tests.support.unit_tier import FAKE_AND_REAL


@pytest.fixture(params=FAKE_AND_REAL)
def organizations(request: pytest.FixtureRequest) -> OrganizationStore | FakeOrganizations:
    if request.param == "fake":
        return FakeOrganizations()
    backends: Backends = request.getfixturevalue("backends")
    return OrganizationStore(mongo=backends.mongo)


async def test_an_organization_is_cached_once_it_was_read(
    organizations: OrganizationStore | FakeOrganizations,
) -> None:
    created = await organizations.create(name="acme", plan="pro")
    assert created.organization_id.startswith("org_") and created.internal_id
    assert organizations.cached(created.organization_id) is None
    read = await organizations.get(created.organization_id)
    assert (read.internal_id, read.organization_id, read.name, read.plan) == (
        created.internal_id,
        created.organization_id,
        "acme",
        "pro",
    )
    assert abs(read.created_at - created.created_at) < timedelta(milliseconds=1)
    assert organizations.cached(created.organization_id) == read


@pytest.mark.parametrize("organization_id", [new_organization_id(), "org_", "not an id", ""])
async def test_unknown_and_malformed_ids_are_not_found(
    organizations: OrganizationStore | FakeOrganizations, organization_id: str
) -> None:
    with pytest.raises(NotFoundError):
        await organizations.get(organization_id)
    assert organizations.cached(organization_id) is None
