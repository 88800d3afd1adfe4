"""Webhook targets: URL rules, and SSRF vetting of every address a name resolves to."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from storage.webhooks.targets import (
    REFUSED_TARGET,
    TargetPolicy,
    TargetRefusedError,
    is_public,
    parse_webhook_url,
    vet_target,
)
from tests.support.webhooks import fake_dns


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "::ffff:10.0.0.1",
        "64:ff9b::a00:1",
        "2002:a00:1::",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


def test_public_addresses() -> None:
    for address in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "8.8.8.8"):
        assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "required"),
        ("ftp://hooks.example/x", "https://"),
        ("hooks.example/x", "https://"),
        ("https://user:pw@hooks.example/", "user info"),
        ("https://hooks.example/#top", "fragment"),
        ("https://hooks.example:0/", "port"),
        ("https://hooks.example:70000/", "malformed"),
        ("https:///path", "host"),
        ("https://hooks example/", "spaces"),
        ("https://hooks.exämple/", "ASCII"),
        ("https://-bad-.example/", "host name"),
        ("https://hooks.example/" + "a" * 2100, "2048"),
    ],
)
def test_malformed_urls(url: str, message: str) -> None:
    with pytest.raises(TargetRefusedError, match=message):
        parse_webhook_url(url)


async def test_vetting_resolves_and_checks_every_address(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every refusal that depends on DNS has the same message (no oracle of internal host
    names); the reason is in the server log only."""
    dns = fake_dns(
        {
            "public.example": ["93.184.216.34"],
            "mixed.example": ["93.184.216.34", "10.0.0.7"],
            "internal.example": ["10.0.0.7"],
            "hooks.internal": ["10.0.0.8"],
        }
    )
    policy = TargetPolicy.from_entries(["hooks.internal", "192.168.7.0/24"])

    async def vet(url: str) -> list[str]:
        return [
            str(a) for a in await vet_target(parse_webhook_url(url), policy=policy, resolver=dns)
        ]

    assert await vet("https://public.example/x") == ["93.184.216.34"]
    assert await vet("https://hooks.internal/x") == ["10.0.0.8"]  # allow-listed by name
    assert await vet("http://hooks.internal/x") == ["10.0.0.8"]  # plain http too
    assert await vet("http://192.168.7.9:8080/") == ["192.168.7.9"]  # by network
    caplog.set_level(logging.WARNING, logger="meshgate.webhooks")
    for url, reason in (
        ("https://mixed.example/", "non-public"),  # one private address is enough
        ("https://internal.example/", "non-public"),
        ("https://nowhere.example/", "does not resolve"),
        ("http://public.example/", "plain http"),
        ("https://192.168.8.1/", "non-public"),
    ):
        caplog.clear()
        with pytest.raises(TargetRefusedError) as info:
            await vet(url)
        assert info.value.message == REFUSED_TARGET, url
        assert [reason in r.getMessage() for r in caplog.records] == [True], url


def test_allow_list_entries_are_validated() -> None:
    with pytest.raises(ValueError, match="neither"):
        TargetPolicy.from_entries(["not a host!"])
    policy = TargetPolicy.from_entries([" Hooks.Example. ", "10.0.0.0/8", "::1"])
    assert policy.host_listed("hooks.example")
