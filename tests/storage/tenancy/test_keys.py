"""KeyStore against MongoDB over the wire: rotations that race each other."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from storage.backends.mongo import MongoStore
from storage.core.errors import FailedPreconditionError, Reason, UnauthenticatedError
from storage.core.ids import new_organization_id
from storage.tenancy.key_verifier import KeyVerifier
from storage.tenancy.keys import PERMISSIONS, KeyReach, KeyStore
from tests.support.held import held_mongo
from tests.support.log_guard import NEVER_LOGGED

EVERYWHERE = KeyReach(permissions=frozenset(PERMISSIONS), namespace_ids=frozenset())


async def test_a_rotation_that_read_stale_secrets_loses(
    quiet_mongo: MongoStore, mongo_uri: str
) -> None:
    """An incident rotation (grace 0) lands while a scheduled rotation (grace 1 day) holds
    what it read before. Written as read, the scheduled one would give the leaked secret
    back a day of life; it must fail instead, and the leaked secret stay dead."""
    organization_id = new_organization_id()
    incident = KeyStore(mongo=quiet_mongo)
    record, leaked = await incident.create(
        organization_id=organization_id,
        name="leaked",
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    NEVER_LOGGED.add(leaked)
    slow_mongo, held = held_mongo(mongo_uri, quiet_mongo.database.name, "keys")
    scheduled = KeyStore(mongo=slow_mongo)
    owner: dict[str, Any] = {
        "organization_id": organization_id,
        "environment": "development",
        "key_id": record.key_id,
        "reach": EVERYWHERE,
    }
    try:
        read = held["keys"].hold("find_one")
        slow = asyncio.create_task(scheduled.rotate(**owner, grace=timedelta(days=1)))
        await read.arrived()  # the scheduled rotation has read the leaked secret
        _, fresh, _ = await incident.rotate(**owner, grace=timedelta(0))
        NEVER_LOGGED.add(fresh)
        read.release()
        with pytest.raises(FailedPreconditionError) as refused:
            await slow
        assert refused.value.reason is Reason.CONCURRENT_CHANGE  # read again and retry
        verifier = KeyVerifier(keys=incident, accepted_environments=frozenset({"development"}))
        with pytest.raises(UnauthenticatedError):
            await verifier.verify(leaked)
        assert (await verifier.verify(fresh)).key_id == record.key_id
        stored = await incident.get(**owner)
        assert len(stored.secrets) == 1  # the incident's secret only
    finally:
        await slow_mongo.close()


async def test_an_organization_holds_at_most_its_cap_of_keys_not_revoked(
    quiet_mongo: MongoStore,
) -> None:
    """The fourth key of an organization capped at three is refused; revoking one frees a
    place; another organization is not affected."""
    organization_id = new_organization_id()
    keys = KeyStore(mongo=quiet_mongo, max_keys=3)

    async def create(organization: str = organization_id) -> str:
        record, secret = await keys.create(
            organization_id=organization,
            name="capped",
            environment="development",
            permissions=frozenset({"read"}),
            namespace_ids=[],
            expires_at=None,
        )
        NEVER_LOGGED.add(secret)
        return record.key_id

    first = [await create() for _ in range(3)]
    with pytest.raises(FailedPreconditionError, match="holds 3 keys that are not revoked"):
        await create()
    await create(new_organization_id())
    await keys.revoke(
        organization_id=organization_id,
        environment="development",
        key_id=first[0],
        reach=EVERYWHERE,
    )
    await create()
    with pytest.raises(FailedPreconditionError):
        await create()
