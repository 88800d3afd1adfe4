"""The webhook store over the wire, in a database no server works on."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from storage.backends.mongo import MongoStore
from storage.core.errors import FailedPreconditionError
from storage.webhooks.sealing import SecretBox
from storage.webhooks.store import WebhookStore
from tests.support.tenants import random_scope

LEASE = timedelta(seconds=30)


async def test_concurrent_rotations_never_lose_an_issued_secret(quiet_mongo: MongoStore) -> None:
    webhooks = WebhookStore(mongo=quiet_mongo, box=SecretBox(b"x" * 32))
    s = random_scope()
    hook, first = await webhooks.create(
        s, url="https://hooks.example/r", event_types=("*",), description=""
    )
    results = await asyncio.gather(
        *(webhooks.rotate(s, hook.webhook_id, grace=timedelta(hours=1)) for _ in range(3)),
        return_exceptions=True,
    )
    issued = [r[1] for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert issued and all(isinstance(r, FailedPreconditionError) for r in refused)
    found = await webhooks.for_delivery(s, hook.webhook_id)
    assert found is not None
    assert {first, *issued} == set(found[1])  # every secret handed out signs
    # sealed at rest: the stored document does not contain them
    raw = await quiet_mongo.scoped("webhooks", s).find_one({"webhook_id": hook.webhook_id})
    assert raw is not None and not any(x[6:] in str(raw) for x in (first, *issued))
