"""Verifying presented API keys, with a brief per-process cache of positive results.

A cache entry lives at most `ttl_s`, never past the key's expiry or the
secret's rotation deadline, and is dropped the moment a revocation or
rotation for its key arrives on the invalidation bus. While the bus is not
connected the cache is bypassed: without invalidations a cached key could
outlive its revocation. A read that was under way when an invalidation (or a
reconnect of the bus) happened does not cache what it found: the cache's
generation moved (storage/core/cache.py).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from storage.core.cache import TTLCache
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError, UnauthenticatedError
from storage.core.key_secrets import MAX_SECRET_LENGTH, digest_secret, parse_secret
from storage.core.peer_bindings import PeerBinding, parse_binding
from storage.core.plans import Limit
from storage.tenancy.keys import KeyReach, KeyRecord

__all__ = ["KeyOwner", "KeyRecords", "KeyVerifier", "UnusableKeyError", "VerifiedKey", "reach_of"]


class KeyRecords(Protocol):
    """What the verifier reads and writes of the key store: `KeyStore`, or an in-memory
    one (tests/support/fakes/keys.py, held to the same cases by tests/contracts/)."""

    async def find_by_digest(self, digest: str) -> KeyRecord | None: ...

    async def touch(self, used: dict[str, datetime]) -> None: ...


@dataclass(frozen=True, slots=True)
class VerifiedKey:
    key_id: str
    organization_id: str
    environment: str
    permissions: frozenset[str]
    namespace_ids: frozenset[str]
    valid_until: datetime | None
    rate_limit: Limit | None = None
    # the own limit is in dry run: the plan's alone is enforced (interceptors/rate_limit.py)
    rate_limit_dry_run: bool = False
    # compiled once per verification and cached with the key; None: any peer may present it
    binding: PeerBinding | None = None


def reach_of(key: VerifiedKey) -> KeyReach:
    """How far a verified key reaches (storage/tenancy/keys.py, KeyReach)."""
    return KeyReach(
        permissions=key.permissions,
        namespace_ids=key.namespace_ids,
        bound_peers=frozenset(key.binding.entries) if key.binding else frozenset(),
    )


@dataclass(frozen=True, slots=True)
class KeyOwner:
    """Whose a stored key is: enough to count a refused call in its organization's usage."""

    key_id: str
    organization_id: str
    environment: str


class UnusableKeyError(UnauthenticatedError):
    """A secret of a stored key that may not be used (revoked, disabled, expired, rotated
    out, of an environment this deployment does not accept). The caller gets what every bad
    key gets (same message, same reason); `owner` stays on the server, for usage analytics:
    only the key's own organization sees the refusal counted."""

    def __init__(self, owner: KeyOwner) -> None:
        super().__init__()
        self.owner = owner


class KeyVerifier:
    def __init__(
        self,
        *,
        keys: KeyRecords,
        accepted_environments: frozenset[str],
        ttl_s: float = 10.0,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._keys = keys
        self._accepted = accepted_environments
        self._now = now
        self._cache: TTLCache[str, VerifiedKey] = TTLCache(ttl_s=ttl_s, max_entries=100_000)
        self._used: dict[str, float] = {}  # key_id -> epoch seconds of its last use
        self.cache_enabled = False

    @property
    def cache(self) -> TTLCache[str, VerifiedKey]:
        return self._cache

    def forget_key(self, key_id: str) -> None:
        self._cache.pop_where(lambda v: v.key_id == key_id)

    def forget_all(self) -> None:
        self._cache.clear()

    def set_live(self, live: bool) -> None:
        """The invalidation channel came up or went down: either way what is cached may
        have missed a message, so it is dropped; the cache is used only while live."""
        self._cache.clear()
        self.cache_enabled = live

    def cached(self, secret: str) -> VerifiedKey | None:
        """The key a recently verified secret belongs to, without I/O; None: call `verify`.

        A hit needs no parsing: the cache is keyed by the SHA-256 of secrets that
        already passed every check, and its entries never outlive the key.
        """
        if not self.cache_enabled or len(secret) > MAX_SECRET_LENGTH or not secret.isascii():
            return None  # `verify` refuses malformed secrets
        digest = digest_secret(secret)
        verified = self._cache.get(digest)
        if verified is None:
            return None
        if verified.valid_until is not None and verified.valid_until <= self._now():
            self._cache.pop(digest)  # `verify` finds it expired in the store and refuses it
            return None
        return verified

    async def verify(self, secret: str) -> VerifiedKey:
        """The key a secret belongs to, from the store (`cached` answers from the cache),
        or UnauthenticatedError (one message for every cause)."""
        parsed = parse_secret(secret)
        if parsed is None or parsed.environment not in self._accepted:
            raise UnauthenticatedError()
        now = self._now()
        # taken before the read: an invalidation (or a bus reconnect) during the read moves
        # the generation, and then what the read found is not cached
        generation = self._cache.generation if self.cache_enabled else None
        record = await self._keys.find_by_digest(parsed.digest)
        if record is None:
            raise UnauthenticatedError()
        verified = self._admit(record, parsed.digest, now)
        if generation is not None and self.cache_enabled:
            ttl = (
                None
                if verified.valid_until is None
                else (verified.valid_until - now).total_seconds()
            )
            self._cache.put(parsed.digest, verified, ttl_s=ttl, if_generation=generation)
        return verified

    def used(self, key: VerifiedKey) -> None:
        """The key was admitted for a call: its last-used time moves (written in batches by
        `flush_last_used`). Not called for a bound key refused for its peer, so a leaked key
        tried from elsewhere does not look in use to the idle-key job."""
        self._used[key.key_id] = time.time()

    def _admit(self, record: KeyRecord, digest: str, now: datetime) -> VerifiedKey:
        secret = next((s for s in record.secrets if hmac.compare_digest(s.digest, digest)), None)
        if secret is None:
            raise UnauthenticatedError()
        deadlines = [d for d in (record.expires_at, secret.not_after) if d is not None]
        valid_until = min(deadlines) if deadlines else None
        if (
            record.revoked_at is not None
            or record.disabled_at is not None
            or (valid_until is not None and valid_until <= now)
            or record.environment not in self._accepted
        ):
            raise UnusableKeyError(
                KeyOwner(record.key_id, record.organization_id, record.environment)
            )
        try:
            binding = parse_binding(record.bound_peers)
        except InvalidArgumentError:  # not written by this version: fail closed
            raise UnauthenticatedError() from None
        return VerifiedKey(
            key_id=record.key_id,
            organization_id=record.organization_id,
            environment=record.environment,
            permissions=record.permissions,
            namespace_ids=record.namespace_ids,
            valid_until=valid_until,
            rate_limit=record.rate_limit,
            rate_limit_dry_run=record.rate_limit_dry_run,
            binding=binding,
        )

    async def flush_last_used(self) -> None:
        used, self._used = self._used, {}
        if used:
            await self._keys.touch(
                {
                    key_id: datetime.fromtimestamp(int(at * 1000) / 1000, UTC)
                    for key_id, at in used.items()
                }
            )
