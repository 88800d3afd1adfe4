"""The MongoDB client's guarantees: majority writes and reads, retries, the primary only."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from pymongo import ReadPreference

from storage.backends.mongo import SAFE_DEFAULTS, MongoStore, client_options


def test_a_uri_without_options_gets_every_safe_default() -> None:
    options = client_options("mongodb://db-0,db-1,db-2/?replicaSet=rs0")
    assert options == {**SAFE_DEFAULTS, "readPreference": "primary"}


def test_the_uri_may_choose_the_concerns_but_not_the_read_preference() -> None:
    """An operator may weaken the concerns in the URI (at their risk); reads stay on the
    primary whatever it says (the settings refuse such a URI before this)."""
    options = client_options(
        "mongodb://db/?replicaSet=rs0&W=1&readconcernlevel=local&readPreference=nearest"
    )
    assert "w" not in options and "readConcernLevel" not in options
    assert options["retryWrites"] is True and options["readPreference"] == "primary"


@pytest.fixture
async def store(mongo_uri: str, database_name: str) -> AsyncIterator[MongoStore]:
    name = f"{database_name}_concerns_{secrets.token_hex(3)}"
    opened = MongoStore(uri=mongo_uri, database=name)
    yield opened
    await opened.database.client.drop_database(name)
    await opened.close()


async def test_the_store_writes_and_reads_with_the_majority_on_the_primary(
    store: MongoStore,
) -> None:
    """What the driver sends with every command, and the store (the embedded engine, or
    MESHGATE_TEST_MONGODB_URI) accepts it: a majority write, then a majority read."""
    db = store.database
    assert db.write_concern.document == {"w": "majority"}
    assert db.read_concern.level == "majority"
    assert db.read_preference == ReadPreference.PRIMARY
    assert db.client.options.retry_writes and db.client.options.retry_reads
    await db["probe"].insert_one({"_id": "written", "n": 1})
    assert await db["probe"].find_one({"_id": "written"}) == {"_id": "written", "n": 1}


async def test_index_creation_is_idempotent(store: MongoStore) -> None:
    await store.ensure_indexes()
    first = {name: await store.database[name].index_information() for name in ("keys", "tasks")}
    await store.ensure_indexes()  # what every later start, and every other replica, does
    again = {name: await store.database[name].index_information() for name in ("keys", "tasks")}
    assert again == first and len(first["tasks"]) > 1


async def test_stored_times_come_back_in_utc(store: MongoStore) -> None:
    """Aware, equal to what was written, and in datetime.UTC (whose offset is C code; bson's
    own tzinfo answers from Python in every comparison and subtraction)."""
    written = datetime(2026, 12, 7, 1, 2, 3, 456_000, tzinfo=UTC)
    await store.database["probe"].insert_one({"_id": "when", "at": written})
    found = await store.database["probe"].find_one({"_id": "when"})
    assert found is not None
    assert found["at"] == written and found["at"].tzinfo is UTC
