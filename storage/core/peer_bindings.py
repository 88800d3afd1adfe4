"""Workload bindings of API keys: which mTLS peer identities may present a key.

A binding is a list of entries; a peer is admitted when any entry matches its
identity. The language is deliberately small and matched segment by segment,
never through a regular expression built from user input:

- an exact identity: a SPIFFE ID (`spiffe://meshgate.local/ns/orders/sa/web`),
  or a DNS name / certificate CN / Linkerd identity
  (`web.orders.serviceaccount.identity.linkerd`); compared byte for byte;
- a SPIFFE path pattern, where a path segment that is exactly `*` matches one
  path segment (`spiffe://td/ns/*/sa/web`), and a *last* segment `*` matches
  one or more segments (`spiffe://td/ns/orders/*` matches
  `spiffe://td/ns/orders/sa/web` but not `spiffe://td/ns/orders`).

A `*` inside a segment (`orders-*`), in the trust domain, or `**` is refused:
segments compare whole, so `spiffe://td/ns/orders/*` can never match the
sibling `spiffe://td/ns/orders-evil/x`. A peer identity is matched against
patterns only when it is a well-formed SPIFFE ID (no empty, `.` or `..`
segments, no percent-encoding, query or fragment): a forwarded identity that
plays with path syntax matches only an exact entry equal to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from storage.core.errors import InvalidArgumentError

__all__ = ["MAX_BINDING_ENTRIES", "PeerBinding", "parse_binding"]

MAX_BINDING_ENTRIES = 20
_MAX_ENTRY = 2048
_SCHEME = "spiffe://"
# SPIFFE: trust domain of lowercase letters, digits, dots, dashes and underscores;
# path segments of letters, digits, dots, dashes and underscores
_TRUST_DOMAIN = re.compile(r"[a-z0-9._-]+")
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
# an exact identity that is not a SPIFFE ID: a DNS name, a CN or a Linkerd identity
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,252}")
_ANY = "*"


# a well-formed SPIFFE ID as a whole: one match per presented identity
_SPIFFE_ID = re.compile(r"spiffe://([a-z0-9._-]+)/([A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*)")


def _spiffe_parts(identity: str) -> tuple[str, tuple[str, ...]] | None:
    """(trust domain, path segments) of a well-formed SPIFFE ID, else None."""
    match = _SPIFFE_ID.fullmatch(identity) if len(identity) <= _MAX_ENTRY else None
    if match is None:
        return None
    segments = tuple(match.group(2).split("/"))
    if "." in segments or ".." in segments:
        return None
    return match.group(1), segments


@dataclass(frozen=True, slots=True)
class _Pattern:
    domain: str
    # the segments to compare (without a last `*`); `*` among them matches any one
    fixed: tuple[str, ...]
    # the pattern ended in `*`: one or more segments follow `fixed`
    subtree: bool
    # `fixed` holds a `*`: compared segment by segment, else as one tuple
    inner_any: bool

    def matches(self, domain: str, segments: tuple[str, ...]) -> bool:
        if domain != self.domain:
            return False
        count = len(self.fixed)
        if len(segments) <= count if self.subtree else len(segments) != count:
            return False
        if not self.inner_any:
            return segments[:count] == self.fixed
        return all(want in (_ANY, got) for want, got in zip(self.fixed, segments, strict=False))


@dataclass(frozen=True, slots=True)
class PeerBinding:
    """A compiled binding, kept with the verified key: matching is set lookups and tuple
    comparisons, no parsing of the entries per call."""

    entries: tuple[str, ...]
    _exact: frozenset[str]
    _patterns: tuple[_Pattern, ...]

    def admits(self, identity: str | None) -> bool:
        if not identity:
            return False
        if identity in self._exact:
            return True
        if not self._patterns:
            return False
        parts = _spiffe_parts(identity)
        if parts is None:
            return False
        domain, segments = parts
        return any(p.matches(domain, segments) for p in self._patterns)


def _parse_entry(entry: str) -> _Pattern | None:
    """None for an exact entry, the pattern for one with `*`; InvalidArgumentError if bad."""
    if len(entry) > _MAX_ENTRY:
        raise InvalidArgumentError(
            f"bound_peers: an entry is longer than {_MAX_ENTRY} characters", field="bound_peers"
        )
    if not entry.startswith(_SCHEME):
        if not _NAME.fullmatch(entry):
            raise InvalidArgumentError(
                "bound_peers: an entry must be a SPIFFE ID (spiffe://...), a pattern of one,"
                " or a DNS name",
                field="bound_peers",
            )
        return None
    domain, _, path = entry[len(_SCHEME) :].partition("/")
    segments = tuple(path.split("/")) if path else ()
    if not _TRUST_DOMAIN.fullmatch(domain) or not segments:
        raise InvalidArgumentError(
            "bound_peers: a SPIFFE entry needs a lowercase trust domain and a path",
            field="bound_peers",
        )
    for segment in segments:
        if segment == _ANY:
            continue
        if not _SEGMENT.fullmatch(segment) or segment in (".", ".."):
            raise InvalidArgumentError(
                "bound_peers: a path segment is either `*` or letters, digits, '.', '-', '_'"
                " (no partial wildcards, no empty, '.' or '..' segments)",
                field="bound_peers",
            )
    if _ANY not in segments:
        return None
    subtree = segments[-1] == _ANY
    fixed = segments[:-1] if subtree else segments
    return _Pattern(domain=domain, fixed=fixed, subtree=subtree, inner_any=_ANY in fixed)


def parse_binding(entries: Iterable[str]) -> PeerBinding | None:
    """The compiled binding of `entries` (duplicates dropped, order kept), None when empty."""
    unique = tuple(dict.fromkeys(entries))
    if len(unique) > MAX_BINDING_ENTRIES:
        raise InvalidArgumentError(
            f"bound_peers may list at most {MAX_BINDING_ENTRIES} entries", field="bound_peers"
        )
    if not unique:
        return None
    patterns: list[_Pattern] = []
    exact: set[str] = set()
    for entry in unique:
        pattern = _parse_entry(entry)
        if pattern is None:
            exact.add(entry)
        else:
            patterns.append(pattern)
    return PeerBinding(entries=unique, _exact=frozenset(exact), _patterns=tuple(patterns))
