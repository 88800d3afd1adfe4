"""The key verifier's store: `KeyStore` (MongoDB) and `FakeKeyRecords`, same cases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from server.backends import Backends
from storage.core.errors import InvalidArgumentError
from storage.core.key_secrets import digest_secret
from storage.core.plans import Limit
from storage.tenancy.keys import KeyStore
from tests.support.fakes import FakeKeyRecords
from tests.support.metering import new_organization_id
from tests.support.unit_tier import FAKE_AND_REAL

MILLISECOND = timedelta(milliseconds=1)


@pytest.fixture(params=FAKE_AND_REAL)
def keys(request: pytest.FixtureRequest) -> KeyStore | FakeKeyRecords:
    if request.param == "fake":
        return FakeKeyRecords()
    backends: Backends = request.getfixturevalue("backends")
    return KeyStore(mongo=backends.mongo)


async def test_a_created_key_is_found_by_the_digest_of_its_secret(
    keys: KeyStore | FakeKeyRecords,
) -> None:
    expires = datetime.now(UTC) + timedelta(days=1)
    created, secret = await keys.create(
        organization_id=new_organization_id(),
        name="ci",
        environment="development",
        permissions=frozenset({"read", "write"}),
        namespace_ids=["ns_b", "ns_a", "ns_b"],
        expires_at=expires,
        rate_limit=Limit(per_second=5.0, burst=10),
        bound_peers=("spiffe://mesh/ns/shop/sa/cart",),
    )
    found = await keys.find_by_digest(digest_secret(secret))
    assert found is not None
    assert (found.key_id, found.organization_id, found.name, found.environment) == (
        created.key_id,
        created.organization_id,
        "ci",
        "development",
    )
    assert found.permissions == {"read", "write"}
    assert found.namespace_ids == {"ns_a", "ns_b"}
    assert found.rate_limit == Limit(per_second=5.0, burst=10)
    assert found.bound_peers == ("spiffe://mesh/ns/shop/sa/cart",)
    assert [s.digest for s in found.secrets] == [digest_secret(secret)]
    assert found.secrets[0].not_after is None
    assert found.revoked_at is None and found.disabled_at is None and found.last_used_at is None
    assert found.expires_at is not None and abs(found.expires_at - expires) < MILLISECOND
    assert abs(found.created_at - created.created_at) < MILLISECOND


async def test_an_unknown_digest_finds_nothing(keys: KeyStore | FakeKeyRecords) -> None:
    assert await keys.find_by_digest(digest_secret("mg_dev_" + "x" * 40)) is None


async def test_an_expiry_in_the_past_is_refused(keys: KeyStore | FakeKeyRecords) -> None:
    with pytest.raises(InvalidArgumentError, match="future"):
        await keys.create(
            organization_id=new_organization_id(),
            name="late",
            environment="development",
            permissions=frozenset({"read"}),
            namespace_ids=[],
            expires_at=datetime.now(UTC) - timedelta(seconds=1),
        )


async def test_touch_moves_the_last_use_forward_only(keys: KeyStore | FakeKeyRecords) -> None:
    created, secret = await keys.create(
        organization_id=new_organization_id(),
        name="used",
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    later = datetime(2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    await keys.touch({created.key_id: later})
    await keys.touch({created.key_id: later - timedelta(hours=1), "key_unknown": later})
    found = await keys.find_by_digest(digest_secret(secret))
    assert found is not None and found.last_used_at == later
