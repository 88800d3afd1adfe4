"""Development PKI: a CA, a server certificate and client certificates for mTLS.

`edge-proxy.pem` is the certificate an edge proxy in front of meshgate (nginx,
deploy/nginx/) presents to meshgate; its identity, EDGE_PROXY_ID, is the one to
list in MESHGATE_TRUSTED_PROXIES (docs/proxies.md).

`make certs` runs this; existing files are kept unless --force. Tests import
`issue_pki` to build throwaway PKIs (and a foreign CA) in temporary folders.
Never use these certificates outside a developer machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "meshgate.local"
CLIENT_ID = f"spiffe://{TRUST_DOMAIN}/client/dev"
INTERNAL_ID = f"spiffe://{TRUST_DOMAIN}/internal/dev"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/server"
EDGE_PROXY_ID = f"spiffe://{TRUST_DOMAIN}/proxy/edge"


@dataclass(frozen=True)
class Issued:
    cert_pem: bytes
    key_pem: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def make_ca(
    common_name: str, *, days: int = 825
) -> tuple[Issued, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def issue(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    *,
    common_name: str,
    uris: tuple[str, ...] = (),
    dns: tuple[str, ...] = (),
    ips: tuple[str, ...] = (),
    server: bool,
    days: int = 397,
) -> Issued:
    key = _key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
    sans += [x509.DNSName(d) for d in dns]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        # key identifiers: strict X.509 verifiers (Python 3.13's default) require them
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue_pki(out: Path, *, ca_name: str = "meshgate dev CA") -> None:
    """ca.pem, server.pem, client.pem, internal.pem, edge-proxy.pem (+ *-key.pem) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    ca, ca_key, ca_cert = make_ca(ca_name)
    files = {
        "ca": ca,
        "server": issue(
            ca_key,
            ca_cert,
            common_name="localhost",
            uris=(SERVER_ID,),
            dns=("localhost",),
            ips=("127.0.0.1", "::1"),
            server=True,
        ),
        "client": issue(ca_key, ca_cert, common_name="dev-client", uris=(CLIENT_ID,), server=False),
        "internal": issue(
            ca_key, ca_cert, common_name="dev-internal", uris=(INTERNAL_ID,), server=False
        ),
        "edge-proxy": issue(
            ca_key, ca_cert, common_name="edge-proxy", uris=(EDGE_PROXY_ID,), server=False
        ),
    }
    for stem, issued in files.items():
        (out / f"{stem}.pem").write_bytes(issued.cert_pem)
        key_path = out / f"{stem}-key.pem"
        key_path.write_bytes(issued.key_pem)
        key_path.chmod(0o600)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    parser.add_argument("--force", action="store_true", help="replace existing certificates")
    args = parser.parse_args()
    if (args.out / "server.pem").exists() and not args.force:
        print(f"dev certificates already in {args.out}/ (use --force to replace)")
        return
    issue_pki(args.out)
    print(
        f"dev certificates written to {args.out}/:"
        " ca.pem server.pem client.pem internal.pem edge-proxy.pem"
    )


if __name__ == "__main__":
    main()
