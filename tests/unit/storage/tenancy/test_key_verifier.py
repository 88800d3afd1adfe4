"""The key verifier on an in-memory key store: what it admits, and how long a positive
answer may be reused (never past the key's expiry or its secret's deadline, never while
the invalidation channel is down, never when an invalidation crossed the read)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from storage.core.errors import UnauthenticatedError
from storage.core.key_secrets import digest_secret
from storage.tenancy.key_records import KeyRecord
from storage.tenancy.key_verifier import KeyVerifier
from tests.support.fakes import FakeKeyRecords

START = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


async def setup(**options: object) -> tuple[KeyVerifier, FakeKeyRecords, Clock, str, str]:
    clock = Clock()
    keys = FakeKeyRecords(now=clock)
    record, secret = await keys.create(
        organization_id="org_" + "a" * 20,
        name="k",
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=options.get("expires_at"),  # type: ignore[arg-type]
    )
    verifier = KeyVerifier(keys=keys, accepted_environments=frozenset({"development"}), now=clock)
    return verifier, keys, clock, record.key_id, secret


async def test_nothing_is_cached_while_the_invalidation_channel_is_down() -> None:
    verifier, _, _, key_id, secret = await setup()
    assert (await verifier.verify(secret)).key_id == key_id
    assert verifier.cached(secret) is None
    verifier.set_live(True)
    await verifier.verify(secret)
    assert verifier.cached(secret) is not None
    verifier.set_live(False)  # a message may have been missed: everything is dropped
    verifier.set_live(True)
    assert verifier.cached(secret) is None


async def test_a_cached_key_never_outlives_its_expiry() -> None:
    verifier, _, clock, _, secret = await setup(expires_at=START + timedelta(seconds=5))
    verifier.set_live(True)
    verified = await verifier.verify(secret)
    assert verified.valid_until == START + timedelta(seconds=5)
    clock.now += timedelta(seconds=4)
    assert verifier.cached(secret) == verified
    clock.now += timedelta(seconds=1)
    assert verifier.cached(secret) is None
    with pytest.raises(UnauthenticatedError):
        await verifier.verify(secret)


async def test_a_rotated_out_secret_is_valid_until_its_deadline_only() -> None:
    verifier, keys, clock, key_id, secret = await setup()
    found = await keys.find_by_digest(digest_secret(secret))
    assert found is not None
    deadline = START + timedelta(minutes=1)
    keys.change(
        key_id,
        secrets=[
            {
                "digest": digest_secret(secret),
                "display_prefix": found.display_prefix,
                "created_at": START,
                "not_after": deadline,
            }
        ],
    )
    assert (await verifier.verify(secret)).valid_until == deadline
    clock.now = deadline
    with pytest.raises(UnauthenticatedError):
        await verifier.verify(secret)


class PausedReads(FakeKeyRecords):
    """The next read waits for the test: an invalidation can land while it is under way."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = asyncio.Event()
        self.release = asyncio.Event()

    async def find_by_digest(self, digest: str) -> KeyRecord | None:
        self.reading.set()
        await self.release.wait()
        return await super().find_by_digest(digest)


async def test_a_read_crossed_by_an_invalidation_is_not_cached() -> None:
    keys = PausedReads()
    record, secret = await keys.create(
        organization_id="org_" + "a" * 20,
        name="k",
        environment="development",
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
    )
    verifier = KeyVerifier(keys=keys, accepted_environments=frozenset({"development"}))
    verifier.set_live(True)
    read = asyncio.create_task(verifier.verify(secret))
    await keys.reading.wait()
    verifier.forget_key(record.key_id)  # a revocation arrives while the read is under way
    keys.release.set()
    assert (await read).key_id == record.key_id
    assert verifier.cached(secret) is None


class NoReads(FakeKeyRecords):
    async def find_by_digest(self, digest: str) -> KeyRecord | None:
        raise AssertionError("the store was asked about a secret that cannot be a key")


@pytest.mark.parametrize(
    "secret", ["", "mg_dev_short", "mg_prod_" + "A" * 40 + "_abcdef", "é" * 50]
)
async def test_malformed_or_foreign_secrets_never_reach_the_store(secret: str) -> None:
    verifier = KeyVerifier(keys=NoReads(), accepted_environments=frozenset({"development"}))
    with pytest.raises(UnauthenticatedError):
        await verifier.verify(secret)
    assert verifier.cached(secret) is None
