"""Step 6, authorization: the method's declared permission against the caller's.

ADMIN implies every other permission. Internal-peer methods require an mTLS
identity on the internal allow-list and ignore API keys entirely; the sidecar
services (ext_authz `Check`, `ShouldRateLimit`) likewise require one on the
sidecar allow-list, or anyone could probe keys through them.
"""

from __future__ import annotations

from calls.policy import Access, Policy
from calls.state import CallState, PeerContext
from storage.core.errors import PermissionDeniedError, Reason

__all__ = ["Authorization"]


class Authorization:
    def __init__(
        self, *, internal_peers: frozenset[str], sidecar_peers: frozenset[str] = frozenset()
    ) -> None:
        self._internal_peers = internal_peers
        self._sidecar_peers = sidecar_peers

    @staticmethod
    def applies(policy: Policy) -> bool:
        return policy.access is not Access.PUBLIC

    def check(self, call: CallState, context: PeerContext) -> None:
        policy = call.policy
        if policy.access is Access.INTERNAL_PEER:
            if call.peer_identity is None or call.peer_identity not in self._internal_peers:
                raise PermissionDeniedError(
                    "this method is only available to internal services",
                    reason=Reason.PEER_NOT_ALLOWED,
                )
            return None
        if policy.access is Access.SIDECAR:
            if call.peer_identity is None or call.peer_identity not in self._sidecar_peers:
                raise PermissionDeniedError(
                    "this method is only available to trusted sidecars",
                    reason=Reason.PEER_NOT_ALLOWED,
                )
            return None
        principal = call.require_principal()
        held = principal.key.permissions
        if "admin" in held or policy.permission in held:
            return None
        needed = str(policy.permission).upper()
        raise PermissionDeniedError(
            f"this method needs the {needed} permission",
            reason=Reason.PERMISSION_DENIED_LEVEL,
            metadata={"permission": needed},
        )
