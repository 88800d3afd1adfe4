"""Step 4, authentication, in-process: the key verifier on an in-memory key store."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from calls.policy import Access, Policy
from interceptors.authentication import Authentication
from storage.core.errors import UnauthenticatedError
from storage.core.key_secrets import digest_secret
from storage.tenancy.key_verifier import KeyVerifier
from tests.support.fakes import FakeKeyRecords
from tests.support.request_path import Context, call_state

READ = Policy(access=Access.API_KEY, permission="read")


def step() -> tuple[Authentication, KeyVerifier, FakeKeyRecords]:
    keys = FakeKeyRecords()
    verifier = KeyVerifier(keys=keys, accepted_environments=frozenset({"development"}))
    return Authentication(verifier=verifier), verifier, keys


async def new_key(keys: FakeKeyRecords, **options: object) -> tuple[str, str]:
    record, secret = await keys.create(
        organization_id="org_" + "a" * 20,
        name="k",
        environment=str(options.pop("environment", "development")),
        permissions=frozenset({"read"}),
        namespace_ids=[],
        expires_at=None,
        bound_peers=tuple(options.pop("bound_peers", ())),  # type: ignore[arg-type]
    )
    return record.key_id, secret


async def admit(auth: Authentication, secret: str, *, peer: str | None = None) -> str:
    call = call_state(READ, metadata={"authorization": f"Bearer {secret}"}, peer_identity=peer)
    pending = auth.check(call, Context())
    if pending is not None:
        await pending
    assert call.key is not None
    return call.key.key_id


def test_only_api_key_methods_are_authenticated() -> None:
    assert Authentication.applies(READ)
    for access in (Access.PUBLIC, Access.INTERNAL_PEER, Access.SIDECAR):
        assert not Authentication.applies(Policy(access=access))


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "Basic abc", "bearer" + " " * 200 + "x", "Bearer nope"],
)
async def test_a_missing_or_malformed_header_is_unauthenticated(header: str | None) -> None:
    auth, _, _ = step()
    call = call_state(READ, metadata={} if header is None else {"authorization": header})
    with pytest.raises(UnauthenticatedError, match="missing or invalid API key"):
        pending = auth.check(call, Context())
        if pending is not None:
            await pending
    assert call.key is None


async def test_a_valid_key_is_verified_then_answered_from_the_cache() -> None:
    auth, verifier, keys = step()
    key_id, secret = await new_key(keys)
    assert await admit(auth, secret) == key_id
    verifier.set_live(True)  # the invalidation channel is up: positive results are cached
    await admit(auth, secret)
    call = call_state(READ, metadata={"authorization": f"Bearer {secret}"})
    assert auth.check(call, Context()) is None  # no I/O: decided from the cache
    assert call.key is not None and call.key.key_id == key_id
    verifier.forget_key(key_id)  # a revocation heard: the next call reads the store again
    assert await admit(auth, secret) == key_id
    assert verifier.cache.misses >= 1


@pytest.mark.parametrize(
    "change",
    [
        {"revoked_at": datetime(2030, 1, 1, tzinfo=UTC)},
        {"disabled_at": datetime(2030, 1, 1, tzinfo=UTC)},
        {"expires_at": datetime.now(UTC) - timedelta(seconds=1)},
        {"environment": "production"},
        {"bound_peers": ["not a pattern ["]},
    ],
    ids=["revoked", "disabled", "expired", "other environment", "unreadable binding"],
)
async def test_keys_the_store_holds_but_may_not_be_used_are_unauthenticated(
    change: dict[str, object],
) -> None:
    auth, _, keys = step()
    key_id, secret = await new_key(keys)
    keys.change(key_id, **change)
    with pytest.raises(UnauthenticatedError, match="missing or invalid API key"):
        await admit(auth, secret)


async def test_a_bound_key_from_another_peer_is_refused_and_kept_for_the_audit() -> None:
    auth, _, keys = step()
    key_id, secret = await new_key(keys, bound_peers=("spiffe://meshgate.test/cart",))
    assert await admit(auth, secret, peer="spiffe://meshgate.test/cart") == key_id
    call = call_state(
        READ, metadata={"authorization": f"Bearer {secret}"}, peer_identity="spiffe://x/other"
    )
    with pytest.raises(UnauthenticatedError):
        pending = auth.check(call, Context())
        assert pending is not None
        await pending
    assert call.key is None and call.refused_key is not None and call.refused_key.key_id == key_id


async def test_an_admitted_key_is_marked_used_and_written_in_a_batch() -> None:
    auth, verifier, keys = step()
    _, secret = await new_key(keys)
    await admit(auth, secret)
    await verifier.flush_last_used()
    found = await keys.find_by_digest(digest_secret(secret))
    assert found is not None and found.last_used_at is not None
    assert datetime.now(UTC) - found.last_used_at < timedelta(minutes=1)
