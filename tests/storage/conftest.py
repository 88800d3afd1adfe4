"""Fixtures of the storage tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from storage.backends.mongo import MongoStore


@pytest.fixture(scope="module")
async def quiet_mongo(mongo_uri: str, database_name: str) -> AsyncIterator[MongoStore]:
    """The same MongoDB, another database: the test server's workers never claim from it."""
    store = MongoStore(uri=mongo_uri, database=f"{database_name}_quiet")
    await store.ensure_indexes()
    yield store
    await store.database.client.drop_database(f"{database_name}_quiet")
    await store.close()
