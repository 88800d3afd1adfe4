"""Step 6, authorization, in-process: declared permission against the key's; internal and
sidecar methods by the mTLS peer on their allow-lists."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from calls.policy import Access, Policy
from calls.state import CallState, Principal
from interceptors.authorization import Authorization
from storage.core.errors import FailedPreconditionError, PermissionDeniedError
from storage.tenancy.key_verifier import VerifiedKey
from storage.tenancy.organizations import Organization
from tests.support.request_path import Context, call_state

INTERNAL = "spiffe://meshgate.test/internal"
SIDECAR = "spiffe://meshgate.test/envoy"
STEP = Authorization(internal_peers=frozenset({INTERNAL}), sidecar_peers=frozenset({SIDECAR}))


def holding(permissions: set[str], policy: Policy) -> CallState:
    call = call_state(policy)
    key = VerifiedKey(
        key_id="key_" + "k" * 20,
        organization_id="org_" + "o" * 20,
        environment="development",
        permissions=frozenset(permissions),
        namespace_ids=frozenset(),
        valid_until=None,
    )
    organization = Organization("internal", "org_" + "o" * 20, "acme", "pro", datetime.now(UTC))
    call.principal = Principal(key=key, organization=organization)
    return call


@pytest.mark.parametrize(
    ("held", "needed", "allowed"),
    [
        ({"read"}, "read", True),
        ({"read"}, "write", False),
        ({"write"}, "delete", False),
        ({"read", "write", "delete"}, "admin", False),
        ({"admin"}, "delete", True),
        ({"admin"}, "admin", True),
    ],
)
def test_the_declared_permission_against_the_keys(
    held: set[str], needed: str, allowed: bool
) -> None:
    call = holding(held, Policy(access=Access.API_KEY, permission=needed))
    if allowed:
        STEP.check(call, Context())
    else:
        with pytest.raises(PermissionDeniedError, match=f"needs the {needed.upper()} permission"):
            STEP.check(call, Context())


@pytest.mark.parametrize(
    ("access", "peer", "allowed"),
    [
        (Access.INTERNAL_PEER, INTERNAL, True),
        (Access.INTERNAL_PEER, SIDECAR, False),
        (Access.INTERNAL_PEER, None, False),
        (Access.SIDECAR, SIDECAR, True),
        (Access.SIDECAR, INTERNAL, False),
    ],
)
def test_peer_methods_need_the_peer_on_their_list(
    access: Access, peer: str | None, allowed: bool
) -> None:
    call = call_state(Policy(access=access), peer_identity=peer)
    if allowed:
        STEP.check(call, Context())
    else:
        with pytest.raises(PermissionDeniedError, match="only available to"):
            STEP.check(call, Context())


def test_public_methods_are_not_checked_and_a_key_method_needs_a_principal() -> None:
    assert not Authorization.applies(Policy(access=Access.PUBLIC))
    with pytest.raises(FailedPreconditionError):
        STEP.check(call_state(Policy(access=Access.API_KEY, permission="read")), Context())
