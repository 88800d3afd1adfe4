"""The workload-binding language, from the attacker's side: siblings, path tricks, injection."""

from __future__ import annotations

import pytest

from storage.core.errors import InvalidArgumentError
from storage.core.peer_bindings import MAX_BINDING_ENTRIES, parse_binding

TD = "spiffe://meshgate.local"


def admits(entries: list[str], identity: str | None) -> bool:
    binding = parse_binding(entries)
    assert binding is not None
    return binding.admits(identity)


def test_a_trailing_star_matches_the_subtree_and_never_a_sibling() -> None:
    pattern = [f"{TD}/ns/orders/*"]
    assert admits(pattern, f"{TD}/ns/orders/sa/web")
    assert admits(pattern, f"{TD}/ns/orders/x")
    assert not admits(pattern, f"{TD}/ns/orders")  # one or more segments, not zero
    assert not admits(pattern, f"{TD}/ns/orders-evil/x")
    assert not admits(pattern, f"{TD}/ns/ordersx/sa/web")
    assert not admits(pattern, f"{TD}/ns/orders.evil/x")
    assert not admits(pattern, f"{TD}/NS/orders/x")
    assert not admits(pattern, "spiffe://meshgate.local.evil/ns/orders/x")
    assert not admits(pattern, "spiffe://evil/ns/orders/x")
    assert not admits(pattern, f"{TD}/x/ns/orders/y")


def test_an_inner_star_matches_exactly_one_segment() -> None:
    pattern = [f"{TD}/ns/*/sa/web"]
    assert admits(pattern, f"{TD}/ns/orders/sa/web")
    assert not admits(pattern, f"{TD}/ns/orders/extra/sa/web")
    assert not admits(pattern, f"{TD}/ns/orders/sa/web/more")
    assert not admits(pattern, f"{TD}/ns/orders/sa/api")


def test_path_tricks_in_the_presented_identity_match_no_pattern() -> None:
    pattern = [f"{TD}/ns/orders/*"]
    for tricky in (
        f"{TD}/ns/orders/../admin",
        f"{TD}/ns/orders/./x",
        f"{TD}/ns/orders//x",
        f"{TD}/ns/orders/x/",
        f"{TD}/ns/orders/%2e%2e/admin",
        f"{TD}/ns/orders/x?y=1",
        f"{TD}/ns/orders/x#f",
        f"{TD}/ns/orders/x\n",
        f"{TD}:443/ns/orders/x",
        "",
        None,
    ):
        assert not admits(pattern, tricky), tricky


def test_exact_entries_compare_whole() -> None:
    entries = [f"{TD}/client/dev", "web.orders.serviceaccount.identity.linkerd"]
    assert admits(entries, f"{TD}/client/dev")
    assert admits(entries, "web.orders.serviceaccount.identity.linkerd")
    assert not admits(entries, f"{TD}/client/dev/x")
    assert not admits(entries, f"{TD}/client/de")
    assert not admits(entries, "x.web.orders.serviceaccount.identity.linkerd")


@pytest.mark.parametrize(
    "entry",
    [
        f"{TD}/ns/orders-*",  # no partial wildcards
        f"{TD}/ns/**",
        "spiffe://*/ns/orders",  # no wildcard trust domain
        "spiffe://Meshgate.local/ns",  # trust domains are lowercase
        "spiffe://meshgate.local",  # no path
        f"{TD}/ns//x",
        f"{TD}/ns/../x",
        f"{TD}/ns/orders/",
        f"{TD}/ns/(orders|billing)/x",  # regex syntax is not a pattern (and no regex runs)
        f"{TD}/ns/.*",
        "*",
        "orders.*",
        "has space",
        "",
        "https://meshgate.local/ns/x",
        f"{TD}/" + "a" * 2048,
    ],
)
def test_malformed_entries_are_refused(entry: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_binding([entry])


def test_at_most_twenty_entries_and_duplicates_dropped() -> None:
    binding = parse_binding([f"{TD}/a", f"{TD}/a", f"{TD}/b/*"])
    assert binding is not None and binding.entries == (f"{TD}/a", f"{TD}/b/*")
    assert parse_binding([]) is None
    with pytest.raises(InvalidArgumentError):
        parse_binding([f"{TD}/k{i}" for i in range(MAX_BINDING_ENTRIES + 1)])
