"""The key verifier's store in memory: `KeyRecords` (storage/tenancy/key_verifier.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from storage.core.clock import utc_now
from storage.core.plans import Limit
from storage.tenancy.key_records import KeyRecord, key_from_doc, new_key_doc
from tests.support.fakes.documents import stored

__all__ = ["FakeKeyRecords"]


class FakeKeyRecords:
    """Key documents as `KeyStore` writes them (the same `new_key_doc`), kept as MongoDB
    would return them (`stored`); `create` has the store's signature, `find_by_digest` and
    `touch` are what the verifier uses (tests/contracts/test_key_records.py)."""

    def __init__(self, *, now: Callable[[], datetime] = utc_now) -> None:
        self._docs: dict[str, dict[str, Any]] = {}
        self._now = now

    async def create(
        self,
        *,
        organization_id: str,
        name: str,
        environment: str,
        permissions: frozenset[str],
        namespace_ids: list[str],
        expires_at: datetime | None,
        rate_limit: Limit | None = None,
        rate_limit_dry_run: bool = False,
        bound_peers: tuple[str, ...] = (),
    ) -> tuple[KeyRecord, str]:
        doc, secret = new_key_doc(
            organization_id=organization_id,
            name=name,
            environment=environment,
            permissions=permissions,
            namespace_ids=namespace_ids,
            expires_at=expires_at,
            rate_limit=rate_limit,
            rate_limit_dry_run=rate_limit_dry_run,
            bound_peers=bound_peers,
            now=self._now(),
        )
        self._docs[doc["_id"]] = stored(doc)
        return key_from_doc(doc), secret

    async def find_by_digest(self, digest: str) -> KeyRecord | None:
        for doc in self._docs.values():
            if any(s["digest"] == digest for s in doc["secrets"]):
                return key_from_doc(doc)
        return None

    async def touch(self, used: dict[str, datetime]) -> None:
        for key_id, when in used.items():
            doc = self._docs.get(key_id)
            if doc is not None and (doc["last_used_at"] is None or doc["last_used_at"] < when):
                doc["last_used_at"] = stored({"t": when})["t"]

    def change(self, key_id: str, **fields: Any) -> None:
        """Set fields of a stored key as the other writers of the store do (revoke,
        disable, expire, bind): the states the verifier must refuse."""
        self._docs[key_id] = stored({**self._docs[key_id], **fields})
