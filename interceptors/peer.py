"""Step 3, peer: who is on the other end of the mTLS connection.

The identity is the certificate's SPIFFE URI SAN, else its DNS SAN, else its
CN. Behind a sidecar (Envoy, Istio, Linkerd) the TLS peer is the proxy; a
proxy on the trusted list may forward the client's identity in
`x-forwarded-client-cert` (XFCC) or `l5d-client-id`. Forwarding headers from
any other peer are forged and refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from interceptors.context import CallState, PeerContext
from interceptors.policy import Access
from storage.core.errors import PermissionDeniedError

__all__ = ["PeerIdentity", "parse_xfcc"]

XFCC = "x-forwarded-client-cert"
L5D = "l5d-client-id"
_XFCC_PAIR = re.compile(r'\s*([A-Za-z]+)=("(?:[^"\\]|\\.)*"|[^;,]*)\s*(;|,|$)')
_CN = re.compile(r"(?:^|,)\s*CN=([^,]+)")


def parse_xfcc(header: str) -> str | None:
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


class PeerIdentity:
    """The call's peer identity; refuses forwarded identities from untrusted peers.

    Reading the TLS peer's certificate (`auth_context()`) costs more than the
    rest of a cached call's checks, so unless a decision needs it now (forwarded
    headers, internal-peer methods) the identity is resolved on first use.
    """

    def __init__(self, *, trusted_proxies: frozenset[str]) -> None:
        self._trusted = trusted_proxies

    def check(self, call: CallState, context: PeerContext) -> None:
        forwarded_xfcc = call.metadata.get(XFCC)
        forwarded_l5d = call.metadata.get(L5D)
        if forwarded_xfcc is None and forwarded_l5d is None:
            if call.policy.access in _DECIDED_BY_PEER:
                call.set_peer_identity(tls_identity(context.auth_context() or {}))
            else:
                call.set_peer_identity(resolve=lambda: tls_identity(context.auth_context() or {}))
            return None
        identity = tls_identity(context.auth_context() or {})
        if identity is None or identity not in self._trusted:
            # the refusal is logged and counted under whoever sent the forged headers
            call.set_peer_identity(identity)
            raise PermissionDeniedError(
                "forwarded client identity headers are only accepted from a trusted proxy"
            )
        if forwarded_xfcc is not None:
            call.set_peer_identity(parse_xfcc(forwarded_xfcc))
        else:
            call.set_peer_identity(forwarded_l5d or None)
        return None
