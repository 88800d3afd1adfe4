"""deploy/envoy/: the Envoy configuration that points a service's sidecar at meshgate.

The file is parsed into Envoy's Bootstrap message with the generated types of xds-protos:
every field name and enum value must exist, and every typed_config's type URL must name
a message xds-protos has. Then the parts meshgate relies on are checked: ext_authz and
the rate-limit filter ask the `meshgate` cluster, over v3, failing closed, and that
cluster speaks mutual TLS with a client certificate.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import descriptor_pool, json_format

from interceptors.sidecar.routes import parse_routes
from tests.support.processes import ROOT

ENVOY = ROOT / "deploy" / "envoy" / "envoy.yaml"
TYPE_PREFIX = "type.googleapis.com/"


def type_urls(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "@type":
                found.add(value)
            else:
                found |= type_urls(value)
    elif isinstance(node, list):
        for item in node:
            found |= type_urls(item)
    return found


def load_type(url: str) -> None:
    """Imports the xds-protos modules of the type's package, so the pool knows it."""
    assert url.startswith(TYPE_PREFIX), url
    package = url.removeprefix(TYPE_PREFIX).rsplit(".", 1)[0]
    module = importlib.import_module(package)
    for info in pkgutil.iter_modules(module.__path__):
        if info.name.endswith("_pb2"):
            importlib.import_module(f"{package}.{info.name}")
    descriptor_pool.Default().FindMessageTypeByName(url.removeprefix(TYPE_PREFIX))


def test_every_typed_config_names_a_message_of_xds_protos() -> None:
    document = yaml.safe_load(ENVOY.read_text())
    urls = type_urls(document)
    assert len(urls) >= 6
    for url in sorted(urls):
        load_type(url)


def test_the_configuration_parses_as_envoys_bootstrap() -> None:
    document = yaml.safe_load(ENVOY.read_text())
    for url in type_urls(document):
        load_type(url)
    bootstrap = json_format.ParseDict(document, bootstrap_pb2.Bootstrap())
    listener = bootstrap.static_resources.listeners[0]
    manager = listener.filter_chains[0].filters[0].typed_config

    hcm = hcm_pb2.HttpConnectionManager()
    assert manager.Unpack(hcm)
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
