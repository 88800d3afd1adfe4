"""What the namespace step reads: `NamespaceStore` (MongoDB) and `FakeNamespaces`, by id
or name inside one organization and environment, NOT_FOUND for everything else."""

from __future__ import annotations

import uuid

import pytest

from server.backends import Backends
from storage.core.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from storage.tenancy.namespaces import Namespace, NamespaceStore
from tests.support.fakes import FakeNamespaces
from tests.support.unit_tier import FAKE_AND_REAL

Store = NamespaceStore | FakeNamespaces


@pytest.fixture(params=FAKE_AND_REAL)
def namespaces(request: pytest.FixtureRequest) -> Store:
    if request.param == "fake":
        return FakeNamespaces()
    backends: Backends = request.getfixturevalue("backends")
    return NamespaceStore(mongo=backends.mongo)


async def resolve(store: Store, internal_id: str, environment: str, reference: str) -> Namespace:
    return await store.resolve(
        internal_id=internal_id, environment=environment, reference=reference
    )


async def test_a_namespace_resolves_by_id_and_by_name_and_is_then_cached(
    namespaces: Store,
) -> None:
    org = str(uuid.uuid4())
    orders = await namespaces.create(internal_id=org, name="orders", environment="development")
    assert orders.namespace_id.startswith("ns_")
    for reference in (orders.namespace_id, "orders"):
        assert (
            namespaces.cached(internal_id=org, environment="development", reference=reference)
            is None
        )
        found = await resolve(namespaces, org, "development", reference)
        assert (found.namespace_id, found.internal_id, found.name, found.environment) == (
            orders.namespace_id,
            org,
            "orders",
            "development",
        )
        cached = namespaces.cached(internal_id=org, environment="development", reference=reference)
        assert cached == found


async def test_other_organizations_environments_and_deleted_ones_are_not_found(
    namespaces: Store,
) -> None:
    org, other = str(uuid.uuid4()), str(uuid.uuid4())
    orders = await namespaces.create(internal_id=org, name="orders", environment="development")
    await namespaces.create(internal_id=other, name="billing", environment="development")
    cases = [
        (other, "development", orders.namespace_id),
        (other, "development", "orders"),
        (org, "development", "billing"),
        (org, "production", "orders"),
        (org, "development", "ns_" + "x" * 20),
        (org, "development", "Not A Name"),
    ]
    for internal_id, environment, reference in cases:
        with pytest.raises(NotFoundError):
            await resolve(namespaces, internal_id, environment, reference)
    # what was read (and cached) for one environment stays NOT_FOUND for another
    await resolve(namespaces, org, "development", "orders")
    with pytest.raises(NotFoundError):
        namespaces.cached(internal_id=org, environment="production", reference="orders")
    assert await namespaces.mark_deleting(internal_id=org, namespace_id=orders.namespace_id)
    with pytest.raises(NotFoundError):
        await resolve(namespaces, org, "development", "orders")


async def test_names_are_checked_and_unique_within_an_organization(namespaces: Store) -> None:
    org = str(uuid.uuid4())
    await namespaces.create(internal_id=org, name="orders", environment="development")
    with pytest.raises(AlreadyExistsError):
        await namespaces.create(internal_id=org, name="orders", environment="production")
    await namespaces.create(internal_id=str(uuid.uuid4()), name="orders", environment="development")
    for bad in ("Orders", "1st", "", "a" * 64, "with_underscore"):
        with pytest.raises(InvalidArgumentError):
            await namespaces.create(internal_id=org, name=bad, environment="development")
    with pytest.raises(InvalidArgumentError, match="at most 128"):
        await resolve(namespaces, org, "development", "x" * 129)
