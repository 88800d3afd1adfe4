"""The throwaway PKI of a test session: the dev CA's server and client certificates
(certs/dev_pki.py), two sidecar proxies' certificates, and a client from a foreign CA."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from certs.dev_pki import CLIENT_ID, issue, issue_pki, make_ca

__all__ = ["PROXY_ID", "SHOP_SIDECAR_ID", "Pki", "issue_test_pki"]

# the identity of the sidecar proxy the test settings trust to forward client identities
PROXY_ID = "spiffe://meshgate.local/proxy/envoy"
# the sidecar of one protected workload (`shop`), bound to the organizations it serves
SHOP_SIDECAR_ID = "spiffe://meshgate.local/sidecar/shop/shop"


@dataclass(frozen=True)
class Pki:
    root: Path

    def path(self, name: str) -> Path:
        return self.root / name

    def read(self, name: str) -> bytes:
        return (self.root / name).read_bytes()


def issue_test_pki(root: Path) -> Pki:
    """ca.pem, server.pem, client.pem, internal.pem, edge-proxy.pem (certs/dev_pki.py),
    plus proxy.pem (same CA, PROXY_ID), shop-sidecar.pem (same CA, SHOP_SIDECAR_ID) and
    foreign.pem (another CA, the client's identity); each with its -key.pem."""
    issue_pki(root)
    ca_cert = x509.load_pem_x509_certificate((root / "ca.pem").read_bytes())
    ca_key = load_pem_private_key((root / "ca-key.pem").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    proxy = issue(ca_key, ca_cert, common_name="envoy", uris=(PROXY_ID,), server=False)
    (root / "proxy.pem").write_bytes(proxy.cert_pem)
    (root / "proxy-key.pem").write_bytes(proxy.key_pem)
    shop = issue(ca_key, ca_cert, common_name="shop-sidecar", uris=(SHOP_SIDECAR_ID,), server=False)
    (root / "shop-sidecar.pem").write_bytes(shop.cert_pem)
    (root / "shop-sidecar-key.pem").write_bytes(shop.key_pem)
    _, foreign_key, foreign_cert = make_ca("foreign CA")
    foreign = issue(
        foreign_key, foreign_cert, common_name="intruder", uris=(CLIENT_ID,), server=False
    )
    (root / "foreign.pem").write_bytes(foreign.cert_pem)
    (root / "foreign-key.pem").write_bytes(foreign.key_pem)
    return Pki(root)
