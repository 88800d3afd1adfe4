"""Organization events (`key.revoked`, `credits.threshold`) for namespace webhooks.

Webhooks belong to a namespace; these events belong to an organization. An
organization event goes to the webhooks subscribed to it in every active
namespace it concerns: for `key.revoked` the namespaces the key could act in
(its allow-list, else every namespace of its environment), for
`credits.threshold` every namespace of the organization. Each namespace gets
its own copy through the outbox (crash-safe per namespace). The event id is
derived from what happened (the key, the threshold), so publishing the same
happening again — a retried RevokeKey, another replica crossing the same
threshold — completes an interrupted fan-out and duplicates nothing.
Payloads carry public ids only, never internal_id.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import datetime
from typing import Any

from storage.backends.scoped import Scope
from storage.core.ids import derived_time_ordered_id
from storage.tenancy.namespaces import NamespaceStore
from storage.tenancy.organizations import OrganizationStore
from storage.webhooks.outbox import EventOutbox, new_event

__all__ = ["OrganizationEvents", "organization_event_id"]


def organization_event_id(happening: str, at: datetime) -> str:
    """The same happening (e.g. `key.revoked:<key_id>`) always has the same event id."""
    return derived_time_ordered_id("evt", at, happening)


class OrganizationEvents:
    def __init__(
        self, *, outbox: EventOutbox, organizations: OrganizationStore, namespaces: NamespaceStore
    ) -> None:
        self._outbox = outbox
        self._organizations = organizations
        self._namespaces = namespaces

    async def publish(
        self,
        *,
        organization_id: str,
        event_type: str,
        data: Mapping[str, Any],
        happening: str,
        at: datetime,
        environment: str | None = None,
        only_namespaces: Collection[str] = (),
    ) -> int:
        """Fan the event out; returns how many namespaces it went to."""
        organization = await self._organizations.get(organization_id)
        targets = await self._namespaces.active_ids(
            internal_id=organization.internal_id, environment=environment
        )
        if only_namespaces:
            targets = [t for t in targets if t in only_namespaces]
        event = new_event(event_type, data, now=at, event_id=organization_event_id(happening, at))
        for namespace_id in targets:
            await self._outbox.publish_event(Scope(organization.internal_id, namespace_id), event)
        return len(targets)
