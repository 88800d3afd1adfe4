"""Step 3, peer, over real mTLS: the cheap read of a TLS peer's identity (grpc's
`peer_identities()`) names whom the full read of `auth_context()` names."""

from __future__ import annotations

import json
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certs.dev_pki import CLIENT_ID, issue
from interceptors.peer import peer_tls_identity, tls_identity
from tests.support.pki import Pki


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
