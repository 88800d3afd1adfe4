"""KeyService: create, read, rotate and revoke API keys of the caller's organization.

An admin key manages keys of its own environment only, and of those only the
keys within its reach (storage/tenancy/keys.py, KeyReach): keys of other
environments or with more reach are invisible (NOT_FOUND) and cannot be
created from it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from meshgate.v1 import key_service_pb2 as pb
from meshgate.v1 import key_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import (
    duration,
    environment_from_proto,
    environment_to_proto,
    from_timestamp,
    permission_to_proto,
    permissions_from_proto,
    timestamp,
    validate_name,
)
from storage.core.clock import rfc3339
from storage.core.errors import InvalidArgumentError, PermissionDeniedError, Reason
from storage.core.pages import page_size
from storage.core.peer_bindings import parse_binding
from storage.core.plans import Limit, PlanError
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.key_verifier import reach_of
from storage.tenancy.keys import KeyReach, KeyRecord, KeyStore
from storage.tenancy.namespaces import NamespaceStore
from storage.webhooks.organization_events import OrganizationEvents

__all__ = ["KeyServicer", "key_to_proto"]

_STATES = {
    "active": pb.KEY_STATE_ACTIVE,
    "revoked": pb.KEY_STATE_REVOKED,
    "expired": pb.KEY_STATE_EXPIRED,
    "disabled": pb.KEY_STATE_DISABLED,
}
MAX_NAMESPACES_PER_KEY = 100


def binding_from_proto(entries: list[str]) -> tuple[str, ...]:
    """The entries as given (duplicates dropped), once they parse as a binding."""
    binding = parse_binding(entries)
    return binding.entries if binding else ()


def rate_limit_from_proto(request: Any) -> tuple[Limit | None, bool]:
    """The request's `rate_limit` (None when unset) and whether it is in dry run."""
    if not request.HasField("rate_limit"):
        return None, False
    try:
        limit = Limit(per_second=request.rate_limit.per_second, burst=request.rate_limit.burst)
    except PlanError as exc:
        raise InvalidArgumentError(f"rate_limit: {exc}", field="rate_limit") from None
    return limit, request.rate_limit.dry_run


def key_to_proto(record: KeyRecord, now: datetime) -> pb.Key:
    return pb.Key(
        key_id=record.key_id,
        name=record.name,
        environment=environment_to_proto(record.environment),
        permissions=sorted(permission_to_proto(p) for p in record.permissions),
        namespace_ids=sorted(record.namespace_ids),
        display_prefix=record.display_prefix,
        state=_STATES[record.state(now)],
        create_time=timestamp(record.created_at),
        expire_time=timestamp(record.expires_at),
        last_used_time=timestamp(record.last_used_at),
        revoke_time=timestamp(record.revoked_at),
        rotate_time=timestamp(record.rotated_at),
        rate_limit=(
            pb.RateLimit(
                per_second=record.rate_limit.per_second,
                burst=record.rate_limit.burst,
                dry_run=record.rate_limit_dry_run,
            )
            if record.rate_limit
            else None
        ),
        bound_peers=list(record.bound_peers),
        disable_time=timestamp(record.disabled_at),
    )


class KeyServicer(pb_grpc.KeyServiceServicer):
    def __init__(
        self,
        *,
        keys: KeyStore,
        namespaces: NamespaceStore,
        invalidation: InvalidationBus,
        events: OrganizationEvents,
    ) -> None:
        self._keys = keys
        self._namespaces = namespaces
        self._invalidation = invalidation
        self._events = events

    @staticmethod
    def _owner() -> dict[str, Any]:
        """Keys are managed within the caller's organization and environment, and only
        those within the caller's reach; any other key is NOT_FOUND to it."""
        principal = current_call.get().require_principal()
        return {
            "organization_id": principal.organization.organization_id,
            "environment": principal.key.environment,
            "reach": reach_of(principal.key),
        }

    async def CreateKey(self, request: pb.CreateKeyRequest, context: Any) -> pb.CreateKeyResponse:
        principal = current_call.get().require_principal()
        name = validate_name(request.name, field="name")
        environment = environment_from_proto(request.environment)
        permissions = permissions_from_proto(list(request.permissions))
        if environment != principal.key.environment:
            raise PermissionDeniedError(
                "a key can only create keys of its own environment",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        if len(request.namespaces) > MAX_NAMESPACES_PER_KEY:
            raise InvalidArgumentError(
                f"namespaces may list at most {MAX_NAMESPACES_PER_KEY} entries", field="namespaces"
            )
        namespace_ids = await self._namespaces.ids_exist(
            internal_id=principal.organization.internal_id,
            environment=environment,
            references=list(request.namespaces),
        )
        bound_peers = binding_from_proto(list(request.bound_peers))
        if not reach_of(principal.key).covers(
            permissions=permissions,
            namespace_ids=frozenset(namespace_ids),
            bound_peers=frozenset(bound_peers),
        ):
            raise PermissionDeniedError(
                "a key cannot create a key that reaches further than its own"
                " (higher permissions, namespaces it may not act in itself, or peers"
                " outside its own binding)",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        expires_at = (
            from_timestamp(request.expire_time) if request.HasField("expire_time") else None
        )
        rate_limit, dry_run = rate_limit_from_proto(request)
        record, secret = await self._keys.create(
            organization_id=principal.organization.organization_id,
            name=name,
            environment=environment,
            permissions=permissions,
            namespace_ids=namespace_ids,
            expires_at=expires_at,
            rate_limit=rate_limit,
            rate_limit_dry_run=dry_run,
            bound_peers=bound_peers,
        )
        current_call.get().resource = record.key_id
        return pb.CreateKeyResponse(key=key_to_proto(record, datetime.now(UTC)), secret=secret)

    async def GetKey(self, request: pb.GetKeyRequest, context: Any) -> pb.GetKeyResponse:
        record = await self._keys.get(**self._owner(), key_id=request.key_id)
        return pb.GetKeyResponse(key=key_to_proto(record, datetime.now(UTC)))

    async def ListKeys(self, request: pb.ListKeysRequest, context: Any) -> pb.ListKeysResponse:
        records, token = await self._keys.list_page(
            **self._owner(),
            page_size=page_size(request.page_size),
            page_token=request.page_token,
            idle_for=duration(request.idle_for) if request.HasField("idle_for") else None,
        )
        now = datetime.now(UTC)
        return pb.ListKeysResponse(
            keys=[key_to_proto(r, now) for r in records], next_page_token=token
        )

    async def RotateKey(self, request: pb.RotateKeyRequest, context: Any) -> pb.RotateKeyResponse:
        grace = duration(request.grace_period)
        record, secret, cutoff = await self._keys.rotate(
            **self._owner(), key_id=request.key_id, grace=grace
        )
        await self._invalidation.key_changed(record.key_id)
        return pb.RotateKeyResponse(
            key=key_to_proto(record, datetime.now(UTC)),
            secret=secret,
            previous_secret_expire_time=timestamp(cutoff),
        )

    async def SetKeyRateLimit(
        self, request: pb.SetKeyRateLimitRequest, context: Any
    ) -> pb.SetKeyRateLimitResponse:
        """Any limit may be set on a key within the caller's reach: a key's own limit only
        ever narrows its plan's (interceptors/rate_limit.py), so none reaches further."""
        rate_limit, dry_run = rate_limit_from_proto(request)
        record = await self._keys.set_rate_limit(
            **self._owner(), key_id=request.key_id, rate_limit=rate_limit, dry_run=dry_run
        )
        current_call.get().resource = record.key_id
        await self._invalidation.key_changed(record.key_id)
        return pb.SetKeyRateLimitResponse(key=key_to_proto(record, datetime.now(UTC)))

    async def SetKeyBinding(
        self, request: pb.SetKeyBindingRequest, context: Any
    ) -> pb.SetKeyBindingResponse:
        """The new binding must lie within the caller's own (a bound key cannot unbind a key,
        nor bind one to a peer outside its binding); the previous one may not, since the
        key itself was within the caller's reach (KeyReach.query)."""
        owner = self._owner()
        bound_peers = binding_from_proto(list(request.bound_peers))
        reach: KeyReach = owner["reach"]
        if reach.bound_peers and not reach.covers(
            permissions=frozenset(),
            namespace_ids=reach.namespace_ids,
            bound_peers=frozenset(bound_peers),
        ):
            raise PermissionDeniedError(
                "a bound key can bind keys only to entries of its own binding",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        record, _ = await self._keys.set_binding(
            **owner, key_id=request.key_id, bound_peers=bound_peers
        )
        await self._invalidation.key_changed(record.key_id)
        return pb.SetKeyBindingResponse(key=key_to_proto(record, datetime.now(UTC)))

    async def RevokeKey(self, request: pb.RevokeKeyRequest, context: Any) -> pb.RevokeKeyResponse:
        record = await self._keys.revoke(**self._owner(), key_id=request.key_id)
        await self._invalidation.key_changed(record.key_id)
        assert record.revoked_at is not None
        # every RevokeKey of the key publishes the same event: a retry completes a fan-out
        # that a failure interrupted, and duplicates nothing
        await self._events.publish(
            organization_id=record.organization_id,
            event_type="key.revoked",
            data={
                "organization_id": record.organization_id,
                "key_id": record.key_id,
                "name": record.name,
                "environment": record.environment,
                "revoked_at": rfc3339(record.revoked_at),
            },
            happening=f"key.revoked:{record.key_id}",
            at=record.revoked_at,
            environment=record.environment,
            only_namespaces=record.namespace_ids,
        )
        return pb.RevokeKeyResponse(key=key_to_proto(record, datetime.now(UTC)))
