"""Per-call state, passed inward from the interceptors to the services via a contextvar."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from calls.dry_run import DryRunDenial
from calls.policy import Policy
from storage.backends.scoped import Scope
from storage.core.errors import FailedPreconditionError
from storage.tenancy.key_verifier import KeyOwner, VerifiedKey
from storage.tenancy.namespaces import Namespace
from storage.tenancy.organizations import Organization

__all__ = ["CallState", "PeerContext", "Principal", "current_call"]


class PeerContext(Protocol):
    """What the steps need from a call's grpc context: the TLS peer's certificate fields.

    A grpc `ServicerContext` is one; a sidecar's question (ext_authz `Check`) supplies the
    identity its proxy verified instead, so the same steps judge both (interceptors/sidecar).
    """

    def auth_context(self) -> Mapping[str, Iterable[bytes]]: ...


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated caller: its key and its organization (with the hidden internal_id)."""

    key: VerifiedKey
    organization: Organization


@dataclass(slots=True)
class CallState:
    method: str
    policy: Policy
    request_id: str
    metadata: dict[str, str]
    peer_address: str
    # wall clock (epoch seconds) when the call started: its credits and usage belong there
    started_at: float = 0.0
    # who is on the other end (see interceptors/peer.py); read it as `peer_identity`
    _peer_identity: str | None = None
    _resolve_peer: Callable[[], str | None] | None = None
    key: VerifiedKey | None = None
    # a valid key refused for the peer presenting it (workload binding): audited as a denial
    refused_key: VerifiedKey | None = None
    # a stored key that may not be used (revoked, expired, disabled, rotated out): the call
    # counts in its organization's usage analytics, the caller learns nothing of it
    unusable_key: KeyOwner | None = None
    principal: Principal | None = None
    namespace: Namespace | None = None
    code: grpc.StatusCode = grpc.StatusCode.OK
    # the google.rpc.ErrorInfo reason of the refusal ("" unless the chain refused the call)
    reason: str = ""
    # response metadata the steps add (e.g. ratelimit-*): trailing metadata, with the request
    # id, on success and on error (a unary call sends no initial metadata: it costs a batch)
    response_metadata: tuple[tuple[str, str], ...] = ()
    # credits debited by the credits step (refunded if the call fails on the server's side)
    credits: int = 0
    rate_limited: bool = False
    # what rules in dry run would have refused (calls/dry_run.py): recorded, never enforced
    dry_run: tuple[DryRunDenial, ...] = ()
    # set once every step has let the call through (a failure after that is not a denial)
    admitted: bool = False
    # what the call acted on, for the audit trail (servicers set it for created resources)
    resource: str = ""
    # a sidecar's judged call (ext_authz Check): the HTTP path it asked about, for the access
    # line only (caller-chosen: never a metric label; `method` is its route's name)
    path: str | None = None
    request: Any = None
    # tracing (only when a tracer is configured)
    span: Any = None
    span_token: Any = None

    @property
    def peer_identity(self) -> str | None:
        """Resolved on first use: most calls never need the TLS peer's certificate."""
        if self._resolve_peer is not None:
            resolve, self._resolve_peer = self._resolve_peer, None
            self._peer_identity = resolve()
        return self._peer_identity

    def set_peer_identity(
        self, identity: str | None = None, *, resolve: Callable[[], str | None] | None = None
    ) -> None:
        """The identity now, or a way to find it when someone asks (`resolve`)."""
        self._peer_identity, self._resolve_peer = identity, resolve

    def require_principal(self) -> Principal:
        if self.principal is None:  # the chain guarantees it for ACCESS_API_KEY methods
            raise FailedPreconditionError("this method needs an authenticated caller")
        return self.principal

    def close(self) -> None:
        """The call is over and its grpc context may be gone: nothing resolves from it now."""
        self._resolve_peer = None

    def require_namespace(self) -> Namespace:
        if self.namespace is None:  # the chain guarantees it for namespaced methods
            raise FailedPreconditionError("this method needs a namespace")
        return self.namespace

    def require_scope(self) -> Scope:
        principal = self.require_principal()
        return Scope(
            internal_id=principal.organization.internal_id,
            namespace_id=self.require_namespace().namespace_id,
        )


current_call: ContextVar[CallState] = ContextVar("meshgate_call")
