"""UsageRecorder against MongoDB over the wire: its counters stay within their bound, and
a charged call is never folded (the documents are the credit ledger)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest

from storage.backends.mongo import MongoStore
from storage.core.ids import new_organization_id
from storage.core.outcomes import Outcome
from storage.metering.credits import period_of
from storage.metering.usage import UNATTRIBUTED, UsageRecorder


async def test_the_counters_keep_at_most_their_bound_and_never_fold_a_charge(
    quiet_mongo: MongoStore, caplog: pytest.LogCaptureFixture
) -> None:
    """Refusals of 50 keys x 9 outcomes against a bound of 100 entries: the 100 first keep
    their key, the rest are counted unattributed (one entry per outcome), nothing is lost;
    a charged call past the bound keeps its own entry."""
    organization_id = new_organization_id()
    usage = UsageRecorder(mongo=quiet_mongo, replica=f"bound-{organization_id}", max_entries=100)
    for key in range(50):
        for outcome in Outcome:
            usage.record(
                organization_id=organization_id,
                environment="development",
                namespace_id="",
                method="/m",
                key_id=f"key_{key}",
                outcome=outcome,
                status="UNAUTHENTICATED",
                credits=0,
                rate_limited=False,
            )
    assert len(usage._counters) == 100 + len(Outcome)
    assert usage.folded == 50 * len(Outcome) - 100
    usage.record(
        organization_id=organization_id,
        environment="development",
        namespace_id="ns_x",
        method="/m",
        key_id="key_payer",
        outcome=Outcome.OK,
        status="OK",
        credits=3,
        rate_limited=False,
    )
    with caplog.at_level(logging.WARNING, logger="meshgate.usage"):
        (batch,) = await usage.flush()
    assert "usage counters were full" in caplog.text
    period = period_of(datetime.fromtimestamp(usage.clock(), UTC))
    assert batch.credits == {(organization_id, period): 3}
    assert not usage._counters
    docs = [d async for d in usage.collection.find({"writer": usage.replica})]
    assert sum(d["calls"] for d in docs) == 50 * len(Outcome) + 1
    folded = [d for d in docs if d["organization_id"] == UNATTRIBUTED]
    assert {d["key_id"] for d in folded} == {UNATTRIBUTED} and len(folded) == len(Outcome)
    assert [d["key_id"] for d in docs if d["credits"]] == ["key_payer"]
