"""Step 3, peer, in-process: the TLS peer's identity, or the one a trusted proxy forwarded
(`x-forwarded-client-cert`, certificates included, or `l5d-client-id`)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from calls.policy import Access, Policy
from certs.dev_pki import CLIENT_ID, INTERNAL_ID, issue
from interceptors.peer import L5D, XFCC, ForwardedCertificates, PeerIdentity, parse_xfcc
from storage.core.errors import PermissionDeniedError
from tests.support.pki import Pki
from tests.support.request_path import Context, call_state


def escaped(pem: bytes) -> str:
    """As nginx's `$ssl_client_escaped_cert` and Envoy's `Cert=` send it: URL-encoded PEM."""
    return quote(pem.decode(), safe="")


def test_the_forwarded_certificate_names_the_client(pki: Pki) -> None:
    cert = escaped(pki.read("client.pem"))
    assert parse_xfcc(f'Cert="{cert}"') == CLIENT_ID
    # the certificate is the evidence: a URI element next to it does not override it
    assert parse_xfcc(f'URI={INTERNAL_ID};Cert="{cert}"') == CLIENT_ID
    # the nearest client is the last element
    internal = escaped(pki.read("internal.pem"))
    assert parse_xfcc(f'Cert="{cert}",Cert="{internal}"') == INTERNAL_ID


def test_a_certificate_without_spiffe_id_falls_back_to_dns_then_cn(pki: Pki) -> None:
    ca_cert = x509.load_pem_x509_certificate(pki.read("ca.pem"))
    ca_key = load_pem_private_key(pki.read("ca-key.pem"), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    with_dns = issue(ca_key, ca_cert, common_name="cn-name", dns=("svc.example",), server=False)
    cn_only = issue(ca_key, ca_cert, common_name="cn-name", server=False)
    assert parse_xfcc(f"Cert={escaped(with_dns.cert_pem)}") == "svc.example"
    assert parse_xfcc(f"Cert={escaped(cn_only.cert_pem)}") == "cn-name"


def test_a_certificate_that_does_not_parse_names_nobody() -> None:
    assert parse_xfcc('Cert="-----BEGIN%20CERTIFICATE-----%0Agarbage"') is None
    assert parse_xfcc("Cert=") is None


def test_identities_are_cached_by_certificate_and_bounded(pki: Pki) -> None:
    certificates = ForwardedCertificates(max_entries=2)
    client, internal, proxy = (
        escaped(pki.read(f"{name}.pem")) for name in ("client", "internal", "proxy")
    )
    for _ in range(3):
        assert parse_xfcc(f'Cert="{client}"', certificates) == CLIENT_ID
    assert len(certificates) == 1  # parsed once, found twice
    parse_xfcc(f'Cert="{internal}"', certificates)
    parse_xfcc(f'Cert="{proxy}"', certificates)
    assert len(certificates) == 2
    # an evicted certificate is simply read again
    assert parse_xfcc(f'Cert="{client}"', certificates) == CLIENT_ID


# the step itself: the TLS peer, or the identity a trusted proxy forwarded

PROXY = "spiffe://meshgate.test/edge-proxy"
STEP = PeerIdentity(trusted_proxies=frozenset({PROXY}))


def tls(identity: str) -> Context:
    return Context(auth={"peer_spiffe_id": [identity.encode()]})


@pytest.mark.parametrize("access", [Access.API_KEY, Access.INTERNAL_PEER, Access.PUBLIC])
def test_without_forwarding_headers_the_peer_is_the_tls_identity(access: Access) -> None:
    call = call_state(Policy(access=access))
    STEP.check(call, tls("spiffe://meshgate.test/client"))
    assert call.peer_identity == "spiffe://meshgate.test/client"


def test_a_trusted_proxy_forwards_the_clients_identity(pki: Pki) -> None:
    forwarded = call_state(
        Policy(access=Access.API_KEY),
        metadata={XFCC: f'Cert="{escaped(pki.read("client.pem"))}"'},
    )
    STEP.check(forwarded, tls(PROXY))
    assert forwarded.peer_identity == CLIENT_ID
    linkerd = call_state(Policy(access=Access.API_KEY), metadata={L5D: "cart.shop.serviceaccount"})
    STEP.check(linkerd, tls(PROXY))
    assert linkerd.peer_identity == "cart.shop.serviceaccount"


@pytest.mark.parametrize("header", [XFCC, L5D])
def test_forwarding_headers_from_anyone_else_are_forged(header: str) -> None:
    call = call_state(Policy(access=Access.API_KEY), metadata={header: f"URI={INTERNAL_ID}"})
    with pytest.raises(PermissionDeniedError, match="only accepted from a trusted proxy"):
        STEP.check(call, tls("spiffe://meshgate.test/client"))
    # the refusal is counted under whoever sent the forged header, not the forged identity
    assert call.peer_identity == "spiffe://meshgate.test/client"
