"""Step 3, peer: who is on the other end of the mTLS connection.

The identity is the certificate's SPIFFE URI SAN, else its DNS SAN, else its
CN. Behind a sidecar or an edge proxy (Envoy, Istio, Linkerd, nginx) the TLS
peer is the proxy; a proxy on the trusted list may forward the client's
identity in `x-forwarded-client-cert` (XFCC) or `l5d-client-id`. Forwarding
headers from any other peer are forged and refused.

From XFCC the identity is the last element's (the nearest client's): its
forwarded certificate (`Cert=`, URL-encoded PEM, as nginx's
`$ssl_client_escaped_cert` or Envoy's `forward_client_cert_details` send it),
read the same way as a TLS peer's, else its `URI`, `DNS` or `Subject` CN.
Parsing a certificate costs far more than the rest of the check, and a proxy
forwards the same few certificates over and over, so identities are kept by
the certificate's SHA-256 in a bounded cache.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from urllib.parse import unquote

from cryptography import x509

from calls.policy import Access
from calls.state import CallState, PeerContext
from storage.core.errors import PermissionDeniedError, Reason

__all__ = [
    "ForwardedCertificates",
    "PeerIdentity",
    "certificate_identity",
    "parse_xfcc",
    "peer_tls_identity",
]

XFCC = "x-forwarded-client-cert"
L5D = "l5d-client-id"
# a quoted value as one run of plain characters between escapes (not one alternation per
# character): a forwarded certificate is ~1 KiB, and the per-character form costs ~10x
_XFCC_PAIR = re.compile(r'\s*([A-Za-z]+)=("[^"\\]*(?:\\.[^"\\]*)*"|[^;,]*)\s*(;|,|$)')
_CN = re.compile(r"(?:^|,)\s*CN=([^,]+)")


def parse_xfcc(header: str, certificates: ForwardedCertificates | None = None) -> str | None:
    """The identity of the nearest client in an XFCC header (its last element)."""
    elements: list[dict[str, list[str]]] = [{}]
    pos = 0
    while pos < len(header):
        match = _XFCC_PAIR.match(header, pos)
        if match is None or match.end() == pos:
            return None
        key, value, sep = match.group(1).lower(), match.group(2), match.group(3)
        if value.startswith('"'):
            value = value[1:-1].replace('\\"', '"')
        elements[-1].setdefault(key, []).append(value)
        pos = match.end()
        if sep == ",":
            elements.append({})
    last = elements[-1]
    forwarded = last.get("cert", [])
    if forwarded:
        # the certificate is the evidence: a URI beside it cannot override it
        if certificates is None:
            certificates = ForwardedCertificates()
        return certificates.identity(forwarded[0])
    for uri in last.get("uri", []):
        if uri:
            return uri
    for dns in last.get("dns", []):
        if dns:
            return dns
    for subject in last.get("subject", []):
        cn = _CN.search(subject)
        if cn:
            return cn.group(1)
    return None


def certificate_identity(cert: x509.Certificate) -> str | None:
    """A certificate's identity, in the order of `tls_identity`: a SPIFFE URI SAN, else a
    DNS SAN, else the subject's CN."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        sans = None
    if sans is not None:
        for uri in sans.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri
        for dns in sans.get_values_for_type(x509.DNSName):
            return dns
    for attribute in cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME):
        value = attribute.value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return None


class ForwardedCertificates:
    """Identities of forwarded certificates (`Cert=` of XFCC), cached by SHA-256.

    The certificate is not verified again: the trusted proxy that forwarded it
    verified it when the client connected. One that does not parse has no identity.
    """

    def __init__(self, *, max_entries: int = 1024) -> None:
        self._max = max_entries
        self._known: OrderedDict[bytes, str | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._known)

    def identity(self, escaped_pem: str) -> str | None:
        digest = hashlib.sha256(escaped_pem.encode()).digest()
        known = self._known
        if digest in known:
            known.move_to_end(digest)
            return known[digest]
        try:
            identity = certificate_identity(
                x509.load_pem_x509_certificate(unquote(escaped_pem).encode())
            )
        except ValueError:
            identity = None
        known[digest] = identity
        if len(known) > self._max:
            known.popitem(last=False)
        return identity


# methods whose admission depends on the peer: its identity is read at once
_DECIDED_BY_PEER = frozenset({Access.INTERNAL_PEER, Access.SIDECAR})

AuthContext = Mapping[str, Iterable[bytes]]


def _first(auth: AuthContext, name: str) -> str | None:
    values = list(auth.get(name, ()))
    return values[0].decode(errors="replace") if values else None


def tls_identity(auth: AuthContext) -> str | None:
    spiffe = _first(auth, "peer_spiffe_id")
    if spiffe:
        return spiffe
    sans = [v.decode(errors="replace") for v in auth.get("x509_subject_alternative_name", [])]
    for san in sans:
        if san.startswith("spiffe://"):
            return san
    dns = _first(auth, "peer_dns")
    if dns:
        return dns
    return _first(auth, "x509_common_name")


def peer_tls_identity(context: PeerContext) -> str | None:
    """`tls_identity` of the call's TLS peer, without reading the whole certificate when a
    cheaper answer is the same one.

    `auth_context()` copies every property of the connection (the certificate's PEM among
    them) into a dict of lists, about 10 µs a call; grpc's `peer_identities()` returns only
    the certificate's subject alternative names (its CN when it has none), under 1 µs.
    When exactly one of those starts with `spiffe://` (in any case), it is what
    `tls_identity` answers: grpc sets `peer_spiffe_id` only for a certificate whose one URI
    SAN is a SPIFFE ID, which is then that value, and otherwise `tls_identity` takes the
    first SAN starting with `spiffe://`; a certificate without SANs yields its CN either
    way. Anything else (no such name, several, a context without `peer_identities` such as
    a sidecar's question) reads `auth_context()` as before.
    """
    identities = getattr(context, "peer_identities", None)
    if identities is not None:
        only = _only_spiffe_name(identities())
        if only is not None:
            return only
    return tls_identity(context.auth_context() or {})


def _only_spiffe_name(names: Iterable[bytes] | None) -> str | None:
    found: bytes | None = None
    for name in names or ():
        if name[:9].lower() == b"spiffe://":
            if found is not None or not name.startswith(b"spiffe://"):
                return None  # several, or a prefix tls_identity would not take as such
            found = name
    return found.decode(errors="replace") if found is not None else None


class PeerIdentity:
    """The call's peer identity; refuses forwarded identities from untrusted peers.

    Reading the TLS peer's certificate (`auth_context()`) costs more than the
    rest of a cached call's checks, so unless a decision needs it now (forwarded
    headers, internal-peer methods) the identity is resolved on first use.
    """

    def __init__(
        self,
        *,
        trusted_proxies: frozenset[str],
        certificates: ForwardedCertificates | None = None,
    ) -> None:
        self._trusted = trusted_proxies
        self._certificates = ForwardedCertificates() if certificates is None else certificates

    def check(self, call: CallState, context: PeerContext) -> None:
        forwarded_xfcc = call.metadata.get(XFCC)
        forwarded_l5d = call.metadata.get(L5D)
        if forwarded_xfcc is None and forwarded_l5d is None:
            if call.policy.access in _DECIDED_BY_PEER:
                call.set_peer_identity(peer_tls_identity(context))
            else:
                call.set_peer_identity(resolve=lambda: peer_tls_identity(context))
            return None
        identity = peer_tls_identity(context)
        if identity is None or identity not in self._trusted:
            # the refusal is logged and counted under whoever sent the forged headers
            call.set_peer_identity(identity)
            raise PermissionDeniedError(
                "forwarded client identity headers are only accepted from a trusted proxy",
                reason=Reason.FORWARDED_IDENTITY_UNTRUSTED,
            )
        if forwarded_xfcc is not None:
            call.set_peer_identity(parse_xfcc(forwarded_xfcc, self._certificates))
        else:
            call.set_peer_identity(forwarded_l5d or None)
        return None
