"""An API key as stored in MongoDB: its record, its secrets (SHA-256 digests only) and the
documents they are written as. storage/tenancy/keys.py reads and writes them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from storage.core.errors import InvalidArgumentError
from storage.core.ids import new_key_id
from storage.core.key_secrets import MintedSecret, mint_secret
from storage.core.plans import Limit

__all__ = [
    "KeyRecord",
    "KeySecret",
    "idle_since_before",
    "key_from_doc",
    "new_key_doc",
    "rate_limit_doc",
    "retired_doc",
    "secret_doc",
]


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
    # the own limit is in dry run: computed and recorded, not enforced (calls/dry_run.py)
    rate_limit_dry_run: bool = False
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
        rate_limit_dry_run=bool((doc.get("rate_limit") or {}).get("dry_run")),
        bound_peers=tuple(doc.get("bound_peers") or ()),
        disabled_at=doc.get("disabled_at"),
    )


def rate_limit_doc(limit: Limit | None, dry_run: bool) -> dict[str, Any] | None:
    if limit is None:
        return None
    return {"per_second": limit.per_second, "burst": limit.burst, "dry_run": dry_run}


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
    rate_limit_dry_run: bool = False,
    bound_peers: tuple[str, ...],
    now: datetime,
) -> tuple[dict[str, Any], str]:
    """A new key's document and its secret (returned once, never stored): what the store
    writes, and what an in-memory store of the unit tier keeps (tests/support/fakes)."""
    if expires_at is not None and expires_at <= now:
        raise InvalidArgumentError("expire_time must lie in the future", field="expire_time")
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
        "rate_limit": rate_limit_doc(rate_limit, rate_limit_dry_run),
        "bound_peers": list(bound_peers),
    }
    return doc, minted.secret
