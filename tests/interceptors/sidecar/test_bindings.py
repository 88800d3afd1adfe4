"""Sidecar bindings from the attacker's side: a sidecar credential speaks only for the
organizations and source principals it is bound to (issue 21, item 4).

The shop's sidecar (its own certificate, SHOP_SIDECAR_ID) is bound to one organization and
to the principals of SHOP_CALLERS on the bound server (conftest.py); the proxy, on the same
allow-list, is bound to any.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import yaml
from envoy.service.ratelimit.v3 import rls_pb2
from meshgate.v1 import namespace_service_pb2, options_pb2

from interceptors.sidecar.bindings import BindingError, parse_bindings
from server.env_values import SettingsError
from server.settings import Settings
from tests.interceptors.sidecar.conftest import BoundServer
from tests.support.clients import auth, rpc_error
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.pki import SHOP_SIDECAR_ID
from tests.support.tenants import ENV_PROTO, MakeTenant

OK = rls_pb2.RateLimitResponse.OK
GET_CART = "/shop.v1.CartService/GetCart"


async def test_a_sidecar_cannot_drain_an_organization_it_is_not_bound_to(
    bound_server: BoundServer, make_sidecar_tenant: MakeTenant
) -> None:
    """The issue's reproduction: one ShouldRateLimit naming another organization's admin
    class (16 descriptors of 100 hits) left that organization's own CreateNamespace
    RESOURCE_EXHAUSTED. Now the request is refused whole and draws nothing."""
    victim = await make_sidecar_tenant(plan="tiny")  # admin class: a burst of 3
    drain = rate_limit_request(
        *(
            descriptor(("organization_id", victim.organization_id), ("rate_class", "admin"))
            for _ in range(16)
        ),
        hits_addend=100,
    )
    shop = RateLimit(bound_server.shop)
    error = await rpc_error(shop(drain))
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert error.details() == (
        f"descriptors[0]: this sidecar may not speak for organization {victim.organization_id}"
    )
    # one foreign descriptor among its own organization's refuses the whole request
    own = descriptor(("organization_id", bound_server.organization.organization_id))
    mixed = rate_limit_request(own, drain.descriptors[0])
    assert (await rpc_error(shop(mixed))).code() is grpc.StatusCode.PERMISSION_DENIED
    assert (await shop(rate_limit_request(own))).overall_code == OK
    created = await victim.namespaces.CreateNamespace(
        namespace_service_pb2.CreateNamespaceRequest(
            name="after-the-attempt", environment=ENV_PROTO["development"]
        ),
        metadata=auth(victim.admin),
    )
    assert created.namespace.name == "after-the-attempt"


async def test_check_refuses_a_foreign_principal_or_a_foreign_organizations_key(
    bound_server: BoundServer, make_sidecar_tenant: MakeTenant
) -> None:
    """The shop's sidecar may judge calls of its callers with its organization's keys; not a
    call it claims comes from another principal (an internal peer, say), nor one with the
    key of an organization it does not serve (whose buckets and credits it would spend)."""
    shop = Check(bound_server.shop)
    headers = {"authorization": f"Bearer {bound_server.reader}"}
    mine = await shop(check_request(GET_CART, headers))
    assert mine.HasField("ok_response")
    mesh_caller = "spiffe://cluster.local/ns/web/sa/frontend"
    assert (await shop(check_request(GET_CART, headers, principal=mesh_caller))).HasField(
        "ok_response"
    )
    for principal in ("spiffe://meshgate.local/internal/dev", "spiffe://cluster.local/ns/web", ""):
        refused = await shop(check_request(GET_CART, headers, principal=principal))
        assert refused.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0], principal
        assert refused.status.message == (
            "this sidecar may not speak for the call's source principal"
        )
        assert refused.denied_response.status.code == 403
    other = await make_sidecar_tenant()
    foreign_key = await other.key(options_pb2.PERMISSION_READ)
    foreign = {"authorization": f"Bearer {foreign_key.secret}"}
    refused = await shop(check_request(GET_CART, foreign))
    assert refused.status.message == "this sidecar may not speak for the key's organization"
    assert refused.denied_response.status.code == 403
    assert not any(h.header.key == "ratelimit-remaining" for h in refused.denied_response.headers)
    # the proxy, bound to any organization, is answered for the same call
    assert (await Check(bound_server.proxy)(check_request(GET_CART, foreign))).HasField(
        "ok_response"
    )
    # public routes: the principal is still checked
    public = await shop(check_request("/shop.v1.StatusService/Ping", principal="spiffe://x/y"))
    assert public.denied_response.status.code == 403


def test_every_allow_listed_sidecar_must_be_bound(tmp_path: Path) -> None:
    """The upgrade: MESHGATE_EXT_AUTHZ_PEERS without a bindings file stops the server (before,
    every listed sidecar could speak for any organization), as do a listed sidecar without
    a binding and a binding of a sidecar not listed."""
    env = {"MESHGATE_EXT_AUTHZ_PEERS": SHOP_SIDECAR_ID}
    with pytest.raises(SettingsError, match="needs MESHGATE_EXT_AUTHZ_BINDINGS_FILE"):
        Settings.from_env(env)
    path = tmp_path / "bindings.yaml"

    def bound(*identities: str) -> dict[str, str]:
        entries = [{"identity": i, "organizations": "*", "principals": "*"} for i in identities]
        path.write_text(yaml.safe_dump({"sidecars": entries}))
        return {**env, "MESHGATE_EXT_AUTHZ_BINDINGS_FILE": str(path)}

    with pytest.raises(SettingsError, match="has no binding"):
        Settings.from_env(bound("spiffe://meshgate.local/sidecar/other"))
    with pytest.raises(SettingsError, match="is bound but not on MESHGATE_EXT_AUTHZ_PEERS"):
        Settings.from_env(bound(SHOP_SIDECAR_ID, "spiffe://meshgate.local/sidecar/typo"))
    settings = Settings.from_env(bound(SHOP_SIDECAR_ID))
    binding = settings.ext_authz_bindings.of(SHOP_SIDECAR_ID)
    assert binding is not None and binding.speaks_for_organization("org_any")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"identity": "a", "organizations": "*"}, "principals is required"),
        ({"identity": "a", "organizations": "*", "principals": "*", "x": 1}, "unknown field"),
        ({"identity": "a", "organizations": ["acme"], "principals": "*"}, "not an organization"),
        ({"identity": "a", "organizations": "*", "principals": []}, "may not be empty"),
        ({"identity": "a", "organizations": "*", "principals": ["spiffe://td/ns/x-*"]}, "segment"),
        ({"identity": "", "organizations": "*", "principals": "*"}, "identity must be"),
    ],
)
def test_a_bad_bindings_file_names_the_entry_and_the_field(
    entry: dict[str, object], message: str
) -> None:
    with pytest.raises(BindingError, match=rf"sidecars\[0\]: .*{message}"):
        parse_bindings({"sidecars": [entry]})
    twice = {"identity": "a", "organizations": "*", "principals": "*"}
    with pytest.raises(BindingError, match="bound twice"):
        parse_bindings({"sidecars": [twice, twice]})
