"""Reading the client's identity out of `x-forwarded-client-cert`, certificates included."""

from __future__ import annotations

from urllib.parse import quote

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certs.dev_pki import CLIENT_ID, INTERNAL_ID, issue
from interceptors.peer import ForwardedCertificates, parse_xfcc
from tests.support.pki import Pki


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
