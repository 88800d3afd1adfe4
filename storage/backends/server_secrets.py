"""Secrets every replica must share, generated once and kept in MongoDB.

Used where a secret is optional configuration but the replicas must agree on it: the
page token key when `MESHGATE_PAGE_TOKEN_KEYS` is not set. The first replica to start
inserts a random secret (insert if absent, so concurrent starts keep one), and every
replica reads that one. Anyone who can read the database can read it too; a deployment
that wants the key out of the database configures it instead.
"""

from __future__ import annotations

import contextlib
import os

from bson.binary import Binary
from pymongo.errors import DuplicateKeyError

from storage.backends.mongo import MongoStore
from storage.core.clock import utc_now

__all__ = ["COLLECTION", "shared_secret"]

COLLECTION = "server_secrets"


async def shared_secret(mongo: MongoStore, name: str, *, size: int = 32) -> bytes:
    """The secret called `name`, created with `size` random bytes if nobody has yet."""
    secrets = mongo.database[COLLECTION]
    # a concurrent upsert of the same id may lose with DuplicateKeyError: the other won
    with contextlib.suppress(DuplicateKeyError):
        await secrets.update_one(
            {"_id": name},
            {"$setOnInsert": {"secret": Binary(os.urandom(size)), "created_at": utc_now()}},
            upsert=True,
        )
    document = await secrets.find_one({"_id": name})
    if document is None:  # pragma: no cover - the upsert above guarantees it
        raise RuntimeError(f"the shared secret {name!r} could not be stored")
    return bytes(document["secret"])
