"""NamespaceStore's cache against a deletion that races a namespace read."""

from __future__ import annotations

import asyncio

import pytest

from storage.backends.mongo import MongoStore
from storage.core.errors import NotFoundError
from storage.core.ids import new_internal_id
from storage.tenancy.namespaces import NamespaceStore
from tests.support.held import held_mongo
from tests.support.log_guard import NEVER_LOGGED


async def test_a_read_under_way_during_a_deletion_does_not_cache_the_namespace(
    quiet_mongo: MongoStore, mongo_uri: str
) -> None:
    """The read starts before DeleteNamespace marks the namespace and ends after; the
    namespace must not be cached and must resolve nowhere from then on."""
    mongo, held = held_mongo(mongo_uri, quiet_mongo.database.name, "namespaces")
    namespaces = NamespaceStore(mongo=mongo)
    internal_id = new_internal_id()
    NEVER_LOGGED.add(internal_id)
    created = await namespaces.create(
        internal_id=internal_id, name="racing", environment="development"
    )
    where = {"internal_id": internal_id, "environment": "development", "reference": "racing"}
    try:
        read = held["namespaces"].hold("find_one")
        resolving = asyncio.create_task(namespaces.resolve(**where))
        await read.arrived()
        assert await namespaces.mark_deleting(
            internal_id=internal_id, namespace_id=created.namespace_id
        )
        read.release()
        assert (await resolving).namespace_id == created.namespace_id
        assert namespaces.cached(**where) is None
        with pytest.raises(NotFoundError):
            await namespaces.resolve(**where)
    finally:
        await mongo.close()
