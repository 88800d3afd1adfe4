"""Reading the client's identity: out of `x-forwarded-client-cert`, certificates included,
and out of the TLS connection."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certs.dev_pki import CLIENT_ID, INTERNAL_ID, issue
from interceptors.peer import ForwardedCertificates, parse_xfcc, peer_tls_identity, tls_identity
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


async def test_the_cheap_read_of_a_tls_peer_names_whom_the_full_read_names(pki: Pki) -> None:
    """`peer_tls_identity` reads grpc's `peer_identities()` when it can and the whole
    `auth_context()` otherwise; over real mTLS connections, with certificates of every
    shape a client could present, both name the same peer."""
    ca_cert = x509.load_pem_x509_certificate(pki.read("ca.pem"))
    ca_key = load_pem_private_key(pki.read("ca-key.pem"), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    shapes: dict[str, dict[str, Any]] = {
        "one spiffe URI": {"uris": (CLIENT_ID,)},
        "two spiffe URIs": {"uris": ("spiffe://a.example/one", "spiffe://a.example/two")},
        "spiffe URI and DNS": {"uris": (CLIENT_ID,), "dns": ("svc.example",)},
        "spiffe URI and another URI": {"uris": ("https://a.example/", CLIENT_ID)},
        "upper-case scheme": {"uris": ("SPIFFE://a.example/upper",)},
        "DNS and an IP": {"dns": ("svc.example",), "ips": ("10.1.2.3",)},
        "CN only": {},
        "CN shaped like a SPIFFE ID": {"common_name": "spiffe://a.example/cn"},
    }
    seen: dict[str, tuple[str | None, str | None]] = {}

    async def both(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        return json.dumps(
            [peer_tls_identity(context), tls_identity(context.auth_context() or {})]
        ).encode()

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "t.Peer", {"Both": grpc.unary_unary_rpc_method_handler(both)}
            ),
        )
    )
    port = server.add_secure_port(
        "127.0.0.1:0",
        grpc.ssl_server_credentials(
            [(pki.read("server-key.pem"), pki.read("server.pem"))],
            root_certificates=pki.read("ca.pem"),
            require_client_auth=True,
        ),
    )
    await server.start()
    try:
        for shape, names in shapes.items():
            issued = issue(ca_key, ca_cert, **{"common_name": "cn-name", **names}, server=False)
            credentials = grpc.ssl_channel_credentials(
                pki.read("ca.pem"), issued.key_pem, issued.cert_pem
            )
            async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
                call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
                    "/t.Peer/Both"
                )
                answer = await call(b"", timeout=10)
            cheap, full = json.loads(answer)
            seen[shape] = (cheap, full)
    finally:
        await server.stop(None)
    assert all(cheap == full for cheap, full in seen.values()), seen
    assert seen["one spiffe URI"][0] == CLIENT_ID
    assert seen["CN only"][0] == "cn-name"
