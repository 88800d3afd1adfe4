"""The usage observer's ledger: `UsageRecorder` (MongoDB) and `FakeUsage`: the batches a
flush stores, and what `query` sums from them."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

import pytest

from server.backends import Backends
from storage.metering.usage import UsageRecorder, UsageRow
from tests.support.fakes import FakeUsage
from tests.support.metering import new_organization_id
from tests.support.unit_tier import FAKE_AND_REAL

Usage = UsageRecorder | FakeUsage
HOUR = datetime(2031, 3, 4, 5, tzinfo=UTC)


@pytest.fixture(params=FAKE_AND_REAL)
def usage(request: pytest.FixtureRequest) -> Usage:
    replica = "contract-" + secrets.token_hex(4)
    if request.param == "fake":
        return FakeUsage(replica=replica)
    backends: Backends = request.getfixturevalue("backends")
    return UsageRecorder(mongo=backends.mongo, replica=replica)


def calls(usage: Usage, organization_id: str) -> None:
    """Four calls in one hour and one the hour after, by two keys; one in production."""
    at = HOUR.timestamp()
    for namespace, method, key, status, outcome, credits, limited, offset in [
        ("ns_a", "/s/Get", "key_a", "OK", "OK", 1, False, 60),
        ("ns_a", "/s/Get", "key_a", "NOT_FOUND", "OTHER", 1, False, 120),
        ("ns_b", "/s/Put", "key_b", "OK", "OK", 5, False, 180),
        ("ns_b", "/s/Put", "key_b", "RESOURCE_EXHAUSTED", "RATE_LIMITED", 0, True, 240),
        ("ns_a", "/s/Get", "key_a", "OK", "OK", 1, False, 3600 + 60),
    ]:
        usage.record(
            organization_id=organization_id,
            environment="development",
            namespace_id=namespace,
            method=method,
            key_id=key,
            outcome=outcome,
            status=status,
            credits=credits,
            rate_limited=limited,
            at=at + offset,
        )
    usage.record(
        organization_id=organization_id,
        environment="production",
        namespace_id="ns_a",
        method="/s/Get",
        key_id="key_p",
        outcome="OK",
        status="OK",
        credits=7,
        rate_limited=False,
        at=at,
    )


async def test_a_flush_stores_one_batch_with_the_credits_per_month(usage: Usage) -> None:
    organization = new_organization_id()
    calls(usage, organization)
    batches = await usage.flush()
    assert [dict(b.credits) for b in batches] == [{(organization, "2031-03"): 15}]
    assert batches[0].batch == 1
    assert await usage.flush() == []


async def test_queries_group_and_filter_what_was_stored(usage: Usage) -> None:
    organization = new_organization_id()
    calls(usage, organization)
    await usage.flush()

    async def query(
        group_by: tuple[str, ...],
        only: frozenset[str] = frozenset(),
        *,
        key_ids: frozenset[str] | None = None,
        outcomes: frozenset[str] = frozenset(),
    ) -> list[UsageRow]:
        return await usage.query(
            organization_id=organization,
            environment="development",
            only_namespaces=only,
            start=HOUR,
            end=HOUR + timedelta(days=1),
            group_by=group_by,
            key_ids=key_ids,
            outcomes=outcomes,
        )

    def row(
        calls: int, credits: int, limited: int, by_status: dict[str, int], **dims: object
    ) -> UsageRow:
        fields: dict[str, object] = dict.fromkeys(
            ("namespace_id", "method", "start", "key_id", "outcome")
        )
        fields.update(dims)
        return UsageRow(
            **fields,  # type: ignore[arg-type]
            calls=calls,
            credits=credits,
            rate_limited=limited,
            by_status=by_status,
        )

    everything = {"OK": 3, "NOT_FOUND": 1, "RESOURCE_EXHAUSTED": 1}
    assert await query(()) == [row(5, 8, 1, everything)]
    assert await query(("namespace", "method")) == [
        row(3, 3, 0, {"OK": 2, "NOT_FOUND": 1}, namespace_id="ns_a", method="/s/Get"),
        row(2, 5, 1, {"OK": 1, "RESOURCE_EXHAUSTED": 1}, namespace_id="ns_b", method="/s/Put"),
    ]
    assert await query(("hour",), frozenset({"ns_a"})) == [
        row(2, 2, 0, {"OK": 1, "NOT_FOUND": 1}, start=HOUR),
        row(1, 1, 0, {"OK": 1}, start=HOUR + timedelta(hours=1)),
    ]
    assert await query(("day",)) == [row(5, 8, 1, everything, start=HOUR.replace(hour=0))]
    assert await query(("key", "outcome")) == [
        row(2, 2, 0, {"OK": 2}, key_id="key_a", outcome="OK"),
        row(1, 1, 0, {"NOT_FOUND": 1}, key_id="key_a", outcome="OTHER"),
        row(1, 5, 0, {"OK": 1}, key_id="key_b", outcome="OK"),
        row(1, 0, 1, {"RESOURCE_EXHAUSTED": 1}, key_id="key_b", outcome="RATE_LIMITED"),
    ]
    assert await query(("outcome",), key_ids=frozenset({"key_b"})) == [
        row(1, 5, 0, {"OK": 1}, outcome="OK"),
        row(1, 0, 1, {"RESOURCE_EXHAUSTED": 1}, outcome="RATE_LIMITED"),
    ]
    assert await query((), outcomes=frozenset({"RATE_LIMITED", "OTHER"})) == [
        row(2, 1, 1, {"NOT_FOUND": 1, "RESOURCE_EXHAUSTED": 1})
    ]
