"""The idle-key job: organizations' idle-key policies, applied by every replica at once.

Each round, for every organization environment whose policy is on (`idle_days`):

1. keys unused for `idle_days - notice_days` get one `key.expiring` event per idle
   period (a conditional write picks the one replica that sends and audits it);
2. keys unused for `idle_days` are marked, and disabled in a later round once the
   mark is older than `confirm` and the key is still unused (last-used times reach
   the store in batches; storage/tenancy/idle_keys.py says why that makes a late
   use win); the one replica whose conditional write disabled the key audits it,
   drops it from every replica's key cache and publishes `key.disabled`;
3. `key.disabled` events that a replica died before publishing are published by
   whichever replica sees them (their event id is derived from the key).

Events go to the webhooks of the namespaces the key could act in, like
`key.revoked` (storage/webhooks/organization_events.py). The clock is injected,
so tests move days without sleeping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from storage.audit.log import AuditLog
from storage.core.clock import rfc3339, utc_now
from storage.tenancy.idle_keys import IdleKeyStore, idle_token
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.keys import KeyRecord
from storage.tenancy.organizations import KeyIdlePolicy, OrganizationStore
from storage.webhooks.organization_events import OrganizationEvents

__all__ = ["CONFIRM", "IdleKeys"]

_LOG = logging.getLogger("meshgate.keys")
# longer than two last-used flushes (30 s each) plus a slow write
CONFIRM = timedelta(seconds=90)
# what audit events of the job name as their method and peer
JOB_METHOD = "/meshgate.jobs.IdleKeys/{}"
JOB_PEER = "meshgate/idle-keys"


class IdleKeys:
    def __init__(
        self,
        *,
        organizations: OrganizationStore,
        idle: IdleKeyStore,
        events: OrganizationEvents,
        audit: AuditLog,
        invalidation: InvalidationBus,
        confirm: timedelta = CONFIRM,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self._organizations = organizations
        self._idle = idle
        self._events = events
        self._audit = audit
        self._invalidation = invalidation
        self._confirm = confirm
        self._now = now

    async def run_once(self) -> None:
        for organization_id, policy in await self._organizations.key_idle_policies():
            await self._apply(organization_id, policy)

    async def _apply(self, organization_id: str, policy: KeyIdlePolicy) -> None:
        now = self._now()
        if policy.notice_days:
            notice_at = now - timedelta(days=policy.idle_days - policy.notice_days)
            for key in await self._idle.idle_since(
                organization_id=organization_id,
                environment=policy.environment,
                cutoff=notice_at,
            ):
                if await self._idle.claim_notice(key):
                    await self._notice(key, policy)
        cutoff = now - timedelta(days=policy.idle_days)
        for key in await self._idle.idle_since(
            organization_id=organization_id, environment=policy.environment, cutoff=cutoff
        ):
            await self._idle.mark_idle(key)
            disabled_at = await self._idle.disable(key, confirm=self._confirm)
            if disabled_at is not None:
                await self._invalidation.key_changed(key.key_id)
                self._record(key, "DisableKey")
                _LOG.info("disabled idle key %s", key.key_id)
        for key in await self._idle.disabled_unannounced(organization_id=organization_id):
            await self._announce(key)

    def _record(self, key: KeyRecord, action: str) -> None:
        self._audit.record(
            actor_key_id="",
            actor_peer=JOB_PEER,
            organization_id=key.organization_id,
            environment=key.environment,
            namespace_id="",
            method=JOB_METHOD.format(action),
            resource=key.key_id,
            outcome="OK",
            request_id="",
            peer_address="",
        )

    def _data(self, key: KeyRecord) -> dict[str, str]:
        return {
            "organization_id": key.organization_id,
            "key_id": key.key_id,
            "name": key.name,
            "environment": key.environment,
            "last_used_at": rfc3339(key.last_used_at) if key.last_used_at else "",
        }

    async def _notice(self, key: KeyRecord, policy: KeyIdlePolicy) -> None:
        idle_since = key.last_used_at or key.created_at
        disable_after = idle_since + timedelta(days=policy.idle_days)
        await self._events.publish(
            organization_id=key.organization_id,
            event_type="key.expiring",
            data={**self._data(key), "disable_after": rfc3339(disable_after)},
            happening=f"key.expiring:{key.key_id}:{idle_token(key)}",
            at=disable_after - timedelta(days=policy.notice_days),
            environment=key.environment,
            only_namespaces=key.namespace_ids,
        )
        self._record(key, "NoticeKeyExpiring")

    async def _announce(self, key: KeyRecord) -> None:
        assert key.disabled_at is not None
        await self._events.publish(
            organization_id=key.organization_id,
            event_type="key.disabled",
            data={**self._data(key), "disabled_at": rfc3339(key.disabled_at)},
            happening=f"key.disabled:{key.key_id}",
            at=key.disabled_at,
            environment=key.environment,
            only_namespaces=key.namespace_ids,
        )
        await self._idle.announced(key.key_id)
