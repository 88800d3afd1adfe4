"""Where webhooks may point: URL rules and SSRF protection.

A webhook URL is https (plain http only for allow-listed hosts), without user
info or fragment, at most 2048 characters. Its host is resolved and every
address it resolves to must be public: private, loopback, link-local,
multicast, unspecified, reserved and shared (CGNAT) addresses are refused,
also when they hide inside IPv6 (IPv4-mapped, NAT64, 6to4, Teredo). A host is
exempt when `MESHGATE_WEBHOOK_ALLOWED_HOSTS` lists its name, or lists
addresses/networks that cover every address it resolves to.

The check runs when a webhook is created or its URL changes, and again before
every delivery attempt, against the addresses the request then connects to
(storage/webhooks/sender.py pins the connection to them), so a DNS answer that
changes between the check and the connection (rebinding) cannot redirect it.

Every refusal that depends on what the host resolves to (it does not resolve,
it resolves to a non-public address, plain http to a host not on the
allow-list) has one message, `REFUSED_TARGET`, at the API and in delivery
attempts alike: different answers would let a tenant map the mesh's internal
host names through DNS. The reason goes to the server log only. Refusals of
the URL's syntax depend on the text alone and say what is wrong.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from storage.core.errors import InvalidArgumentError

__all__ = [
    "MAX_URL_LENGTH",
    "REFUSED_TARGET",
    "IPAddress",
    "Resolver",
    "TargetPolicy",
    "TargetRefusedError",
    "WebhookUrl",
    "is_public",
    "parse_webhook_url",
    "system_resolver",
    "vet_target",
]

MAX_URL_LENGTH = 2048
REFUSED_TARGET = (
    "url is not an allowed webhook target: it must use https and reach only public"
    " addresses, unless its host is on the server's allow-list"
)
_LOG = logging.getLogger("meshgate.webhooks")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

_HOSTNAME_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*\.?$"
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class TargetRefusedError(InvalidArgumentError):
    """The URL is malformed, or points somewhere webhooks may not go."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="webhook.url")


def _embedded_ipv4(ip: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), else itself."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip in _NAT64:
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return ip


def is_public(ip: IPAddress) -> bool:
    for candidate in {ip, _embedded_ipv4(ip)}:
        if (
            not candidate.is_global
            or candidate.is_private
            or candidate.is_loopback
            or candidate.is_link_local
            or candidate.is_multicast
            or candidate.is_unspecified
            or candidate.is_reserved
        ):
            return False
    return True


@dataclass(frozen=True, slots=True)
class TargetPolicy:
    """The operator's allow-list: host names, and addresses or networks."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_entries(cls, entries: Iterable[str]) -> TargetPolicy:
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if not _HOSTNAME_RE.match(entry):
                raise ValueError(f"{raw!r} is neither a host name, an address nor a network")
            hosts.add(entry.rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def host_listed(self, host: str) -> bool:
        return host.rstrip(".") in self.hosts

    def address_listed(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self.networks if network.version == ip.version)


@dataclass(frozen=True, slots=True)
class WebhookUrl:
    url: str
    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int


def parse_webhook_url(url: str) -> WebhookUrl:
    """Syntax only (no DNS): scheme, host, port, no user info, no fragment."""
    if not url:
        raise TargetRefusedError("url is required")
    if len(url) > MAX_URL_LENGTH:
        raise TargetRefusedError(f"url must be at most {MAX_URL_LENGTH} characters")
    if not url.isascii() or any(c.isspace() or not c.isprintable() for c in url):
        raise TargetRefusedError("url must be ASCII without spaces (percent-encode the rest)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise TargetRefusedError("url is malformed") from None
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http"):
        raise TargetRefusedError("url must start with https:// (or http:// for allow-listed hosts)")
    if "@" in parts.netloc:
        raise TargetRefusedError("url must not carry user info")
    if parts.fragment or url.endswith("#"):
        raise TargetRefusedError("url must not have a fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise TargetRefusedError("url must name a host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME_RE.match(host):
            raise TargetRefusedError("url host is not a valid host name or address") from None
    if port == 0:
        raise TargetRefusedError("url port must be 1-65535")
    return WebhookUrl(
        url=url, scheme=scheme, host=host, port=port or (443 if scheme == "https" else 80)
    )


async def system_resolver(host: str, port: int) -> list[str]:
    """Every address the system resolver gives for host (literals resolve to themselves)."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    out: list[str] = []
    for info in infos:
        address = str(info[4][0]).split("%", 1)[0]  # drop an IPv6 zone
        if address not in out:
            out.append(address)
    return out


def _refused(target: WebhookUrl, reason: str) -> TargetRefusedError:
    """The one message callers see; the reason is for the server log."""
    _LOG.warning("webhook target refused: %s (host %s)", reason, target.host)
    return TargetRefusedError(REFUSED_TARGET)


async def vet_target(
    target: WebhookUrl, *, policy: TargetPolicy, resolver: Resolver
) -> list[IPAddress]:
    """The addresses the request may connect to; TargetRefusedError (REFUSED_TARGET)
    otherwise."""
    try:
        resolved = [str(ipaddress.ip_address(target.host))]  # a literal needs no lookup
    except ValueError:
        try:
            resolved = await resolver(target.host, target.port)
        except (OSError, UnicodeError):
            raise _refused(target, "the host does not resolve") from None
    try:
        addresses = [ipaddress.ip_address(a) for a in resolved]
    except ValueError:
        raise _refused(target, "the host does not resolve to IP addresses") from None
    if not addresses:
        raise _refused(target, "the host does not resolve")
    listed = policy.host_listed(target.host) or all(policy.address_listed(a) for a in addresses)
    if target.scheme == "http" and not listed:
        raise _refused(target, "plain http to a host not on the allow-list")
    if not listed and not all(is_public(a) for a in addresses):
        raise _refused(target, "the host resolves to a non-public address")
    return addresses
