"""deploy/envoy/: the Envoy configuration that points a service's sidecar at meshgate.

The file is parsed into Envoy's Bootstrap message with the generated types of xds-protos:
every field name and enum value must exist, and every typed_config's type URL must name
a message xds-protos has. Then the parts meshgate relies on are checked: ext_authz and
the rate-limit filter ask the `meshgate` cluster, over v3, failing closed, and that
cluster speaks mutual TLS with a client certificate.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from envoy.config.core.v3 import protocol_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from interceptors.sidecar.routes import parse_routes
from server.sidecar_files import ext_authz_bindings
from tests.support.envoy import (
    ENVOY_CONFIG,
    connection_manager,
    envoy_bootstrap,
    load_type,
    type_urls,
)
from tests.support.processes import ROOT


def test_every_typed_config_names_a_message_of_xds_protos() -> None:
    document = yaml.safe_load(ENVOY_CONFIG.read_text())
    urls = type_urls(document)
    assert len(urls) >= 6
    for url in sorted(urls):
        load_type(url)


def test_the_configuration_parses_as_envoys_bootstrap() -> None:
    bootstrap = envoy_bootstrap()
    hcm = connection_manager(bootstrap)
    names = [f.name for f in hcm.http_filters]
    assert names == [
        "envoy.filters.http.ext_authz",
        "envoy.filters.http.ratelimit",
        "envoy.filters.http.router",
    ]
    authz = ext_authz_pb2.ExtAuthz()
    assert hcm.http_filters[0].typed_config.Unpack(authz)
    assert authz.grpc_service.envoy_grpc.cluster_name == "meshgate"
    assert not authz.failure_mode_allow
    assert authz.encode_raw_headers
    limits = rate_limit_pb2.RateLimit()
    assert hcm.http_filters[1].typed_config.Unpack(limits)
    assert limits.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "meshgate"
    assert limits.failure_mode_deny
    # the descriptors use the keys meshgate's rate-limit service reads
    keys = {
        action.request_headers.descriptor_key or action.generic_key.descriptor_key
        for route in hcm.route_config.virtual_hosts[0].routes
        for limit in route.route.rate_limits
        for action in limit.actions
    }
    assert keys == {"organization_id", "namespace_id", "rate_class"}
    cluster = next(c for c in bootstrap.static_resources.clusters if c.name == "meshgate")
    upstream = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(upstream)
    assert upstream.common_tls_context.tls_certificates[0].certificate_chain.filename


def test_paths_are_normalized_and_underscored_header_names_refused() -> None:
    """What reaches meshgate's prefix matching (and the upstream) is a normalized path; a
    header name with an underscore, which WSGI/CGI upstreams read as the dashed one
    (x_meshgate_key_id as x-meshgate-key-id), refuses the request (issue 21, items 7, 8)."""
    hcm = connection_manager(envoy_bootstrap())
    assert hcm.normalize_path.value
    assert hcm.merge_slashes
    assert hcm.path_with_escaped_slashes_action == hcm_pb2.HttpConnectionManager.REJECT_REQUEST
    underscores = hcm.common_http_protocol_options.headers_with_underscores_action
    assert underscores == protocol_pb2.HttpProtocolOptions.REJECT_REQUEST


def test_the_istio_provider_policy_and_port_agree() -> None:
    """The AuthorizationPolicy names the provider of the mesh config entry; the provider, the
    DestinationRule and the overlay's sidecar port are one port; the route policy the
    overlay mounts is valid."""
    istio = ROOT / "deploy" / "overlays" / "istio"
    (provider,) = yaml.safe_load(
        (ROOT / "deploy" / "envoy" / "istio-mesh-config.yaml").read_text()
    )["spec"]["meshConfig"]["extensionProviders"]
    policy = yaml.safe_load((istio / "authorizationpolicy.yaml").read_text())
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"]["name"] == provider["name"]
    grpc_provider = provider["envoyExtAuthzGrpc"]
    assert grpc_provider["failOpen"] is False
    rule = yaml.safe_load((istio / "destinationrule.yaml").read_text())
    assert rule["spec"]["host"] == grpc_provider["service"]
    (setting,) = rule["spec"]["trafficPolicy"]["portLevelSettings"]
    assert setting["port"]["number"] == grpc_provider["port"]
    assert setting["tls"]["mode"] == "MUTUAL"
    overlay = (istio / "kustomization.yaml").read_text()
    port = grpc_provider["port"]
    assert f'MESHGATE_SIDECAR_LISTEN\n        value: "0.0.0.0:{port}"' in overlay
    assert f'excludeInboundPorts\n        value: "{port}"' in overlay
    routes = yaml.safe_load((istio / "routepolicy.yaml").read_text())["data"]["route-policy.yaml"]
    assert len(parse_routes(yaml.safe_load(routes))) > 0


def test_each_protected_workloads_sidecar_has_an_identity_of_its_own_and_a_binding(
    tmp_path: Path,
) -> None:
    """Issue 21, item 4: one shared sidecar certificate let every protected workload speak
    for every organization. Each sidecar certificate of the overlay names one identity, the
    allow-list is exactly those identities, and the bindings mounted beside it bind each to
    named organizations (not "*"), as the server requires at start-up."""
    istio = ROOT / "deploy" / "overlays" / "istio"
    overlay = yaml.safe_load((istio / "kustomization.yaml").read_text())
    config: dict[str, str] = {}
    mounts: dict[str, str] = {}
    for patch in overlay["patches"]:
        for op in yaml.safe_load(patch["patch"]):
            if patch["target"]["kind"] == "ConfigMap":
                config[op["path"].removeprefix("/data/")] = op["value"]
            elif op["path"].endswith("/volumeMounts/-"):
                mounts[op["value"]["name"]] = op["value"]["mountPath"]
            elif op["path"].endswith("/volumes/-") and "configMap" in op["value"]:
                mounts[op["value"]["configMap"]["name"]] = op["value"]["name"]
    peers = {p.strip() for p in config["MESHGATE_EXT_AUTHZ_PEERS"].split(",")}
    certificates = list(yaml.safe_load_all((istio / "sidecar-certificates.yaml").read_text()))
    identities = [uri for c in certificates for uri in c["spec"]["uris"]]
    assert len(identities) == len(set(identities)) == len(certificates) >= 1
    assert set(identities) == peers
    assert all(c["spec"]["usages"] == ["client auth", "digital signature"] for c in certificates)
    (bindings_map,) = yaml.safe_load_all((istio / "sidecarbindings.yaml").read_text())
    bindings_file = Path(config["MESHGATE_EXT_AUTHZ_BINDINGS_FILE"])
    volume = mounts[bindings_map["metadata"]["name"]]
    assert mounts[volume] == str(bindings_file.parent)
    local = tmp_path / bindings_file.name
    local.write_text(bindings_map["data"][bindings_file.name])
    bindings = ext_authz_bindings(
        {"MESHGATE_EXT_AUTHZ_BINDINGS_FILE": str(local)}, frozenset(peers)
    )
    for identity in peers:
        binding = bindings.of(identity)
        assert binding is not None and binding.organizations, identity
