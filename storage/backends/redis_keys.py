"""Redis key names: every key embeds its namespace or organization in a hash tag.

`mg:{ns_…}:…` and `mg:{org_…}:…` keep all of one owner's keys in one Redis
Cluster slot, so multi-key scripts work, and let a namespace deletion find
every key of the namespace with one SCAN pattern, on the one node that owns
the slot.
"""

from __future__ import annotations

from storage.backends.redis_client import RedisClient, scan_slot

__all__ = ["namespace_key", "organization_key", "purge_namespace_keys"]


def namespace_key(namespace_id: str, *parts: str) -> str:
    return ":".join(("mg", f"{{{namespace_id}}}", *parts))


def organization_key(organization_id: str, *parts: str) -> str:
    return ":".join(("mg", f"{{{organization_id}}}", *parts))


async def purge_namespace_keys(redis: RedisClient, namespace_id: str) -> int:
    """Delete every key of a namespace; idempotent."""
    deleted = 0
    batch: list[bytes | str] = []
    async for key in scan_slot(redis, match=namespace_key(namespace_id, "*")):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.delete(*batch)
            batch.clear()
    if batch:
        deleted += await redis.delete(*batch)
    return deleted
