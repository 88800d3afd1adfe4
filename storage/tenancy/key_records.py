"""API keys as stored: their records, their reach, and their documents (no I/O).

The store (storage/tenancy/keys.py) reads and writes these documents in MongoDB; an
in-memory store for the unit tests (tests/support/fakes) builds the very same ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.core.errors import InvalidArgumentError
from storage.core.ids import new_key_id
from storage.core.key_secrets import MintedSecret, mint_secret
from storage.core.plans import Limit

__all__ = [
    "PERMISSIONS",
    "KeyReach",
    "KeyRecord",
    "KeySecret",
    "idle_since_before",
    "key_from_doc",
    "new_key_doc",
    "retired_doc",
    "secret_doc",
]

PERMISSIONS = ("read", "write", "delete", "admin")


def _implied(permissions: frozenset[str]) -> frozenset[str]:
    return frozenset(PERMISSIONS) if "admin" in permissions else permissions


@dataclass(frozen=True, slots=True)
class KeyReach:
    """How far a key reaches: its permissions and its namespace allow-list (empty: every
    namespace of its environment).

    A key sees and manages only keys whose reach lies within its own: permissions no
    higher (ADMIN implies all) and, when its own allow-list is restricted, a non-empty
    allow-list inside it. Otherwise a restricted ADMIN key could rotate an unrestricted
    one and act with its secret. One rule for creating, reading, listing, rotating and
    revoking: `covers` for a key about to be created, `query` for keys in the store.
    """

    permissions: frozenset[str]
    namespace_ids: frozenset[str]
    # the key's workload binding (storage/core/peer_bindings.py); empty: any peer
    bound_peers: frozenset[str] = frozenset()

    def covers(
        self,
        *,
        permissions: frozenset[str],
        namespace_ids: frozenset[str],
        bound_peers: frozenset[str] = frozenset(),
    ) -> bool:
        if not _implied(permissions) <= _implied(self.permissions):
            return False
        if self.namespace_ids and not (namespace_ids and namespace_ids <= self.namespace_ids):
            return False
        # a bound key reaches only keys bound to entries of its own binding: otherwise it
        # could mint or rotate a key usable from anywhere and step out of its workload
        if self.bound_peers:
            return bool(bound_peers) and bound_peers <= self.bound_peers
        return True

    def query(self) -> dict[str, Any]:
        """The same rule as a MongoDB filter, so a list is filtered by the store and its
        pages stay full."""
        query: dict[str, Any] = {}
        if "admin" not in self.permissions:
            query["permissions"] = {"$not": {"$elemMatch": {"$nin": sorted(self.permissions)}}}
        if self.namespace_ids:
            query["namespace_ids.0"] = {"$exists": True}
            query["namespace_ids"] = {"$not": {"$elemMatch": {"$nin": sorted(self.namespace_ids)}}}
        if self.bound_peers:
            query["bound_peers.0"] = {"$exists": True}
            query["bound_peers"] = {"$not": {"$elemMatch": {"$nin": sorted(self.bound_peers)}}}
        return query


@dataclass(frozen=True, slots=True)
class KeySecret:
    digest: str
    display_prefix: str
    created_at: datetime
    not_after: datetime | None


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    organization_id: str
    name: str
    environment: str
    permissions: frozenset[str]
    namespace_ids: frozenset[str]
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    rotated_at: datetime | None
    last_used_at: datetime | None
    secrets: tuple[KeySecret, ...] = field(repr=False)
    rate_limit: Limit | None = None
    # peer identities and patterns the key is bound to (empty: any peer)
    bound_peers: tuple[str, ...] = ()
    # set by the idle-key job (server/workers/key_idle.py)
    disabled_at: datetime | None = None

    @property
    def display_prefix(self) -> str:
        return self.secrets[-1].display_prefix if self.secrets else ""

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.disabled_at is not None:
            return "disabled"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def idle_since_before(cutoff: datetime) -> list[dict[str, Any]]:
    """Keys last used before `cutoff`, or never used and created before it (an `$or`)."""
    return [
        {"last_used_at": {"$lt": cutoff}},
        {"last_used_at": None, "created_at": {"$lt": cutoff}},
    ]


def key_from_doc(doc: dict[str, Any]) -> KeyRecord:
    return KeyRecord(
        key_id=doc["_id"],
        organization_id=doc["organization_id"],
        name=doc["name"],
        environment=doc["environment"],
        permissions=frozenset(doc["permissions"]),
        namespace_ids=frozenset(doc.get("namespace_ids") or ()),
        created_at=doc["created_at"],
        expires_at=doc.get("expires_at"),
        revoked_at=doc.get("revoked_at"),
        rotated_at=doc.get("rotated_at"),
        last_used_at=doc.get("last_used_at"),
        secrets=tuple(
            KeySecret(
                digest=s["digest"],
                display_prefix=s["display_prefix"],
                created_at=s["created_at"],
                not_after=s.get("not_after"),
            )
            for s in doc.get("secrets", ())
        ),
        rate_limit=(
            Limit.clamped(  # stored before the bounds existed: the nearest valid limit
                per_second=float(doc["rate_limit"]["per_second"]),
                burst=int(doc["rate_limit"]["burst"]),
            )
            if doc.get("rate_limit")
            else None
        ),
        bound_peers=tuple(doc.get("bound_peers") or ()),
        disabled_at=doc.get("disabled_at"),
    )


def secret_doc(minted: MintedSecret, now: datetime) -> dict[str, Any]:
    return {
        "digest": minted.digest,
        "display_prefix": minted.display_prefix,
        "created_at": now,
        "not_after": None,
    }


def retired_doc(secret: KeySecret, not_after: datetime) -> dict[str, Any]:
    return {
        "digest": secret.digest,
        "display_prefix": secret.display_prefix,
        "created_at": secret.created_at,
        "not_after": not_after,
    }


def new_key_doc(
    *,
    organization_id: str,
    name: str,
    environment: str,
    permissions: frozenset[str],
    namespace_ids: list[str],
    expires_at: datetime | None,
    rate_limit: Limit | None,
    bound_peers: tuple[str, ...],
    now: datetime,
) -> tuple[dict[str, Any], str]:
    """A new key's document and its secret (returned once, never stored)."""
    if expires_at is not None and expires_at <= now:
        raise InvalidArgumentError("expire_time must lie in the future")
    minted = mint_secret(environment)
    doc = {
        "_id": new_key_id(),
        "organization_id": organization_id,
        "name": name,
        "environment": environment,
        "permissions": sorted(permissions),
        "namespace_ids": sorted(set(namespace_ids)),
        "created_at": now,
        "expires_at": expires_at,
        "revoked_at": None,
        "rotated_at": None,
        "last_used_at": None,
        "secrets": [secret_doc(minted, now)],
        "rate_limit": (
            {"per_second": rate_limit.per_second, "burst": rate_limit.burst} if rate_limit else None
        ),
        "bound_peers": list(bound_peers),
    }
    return doc, minted.secret
