"""The audit step's queue: `AuditLog` (MongoDB) and `FakeAuditLog`: a bounded queue that
refuses audited calls when full, and per organization a hash chain listed newest first."""

from __future__ import annotations

import pytest

from server.backends import Backends
from storage.audit.log import AuditLog
from storage.core.errors import UnavailableError
from tests.support.fakes import FakeAuditLog
from tests.support.metering import new_organization_id
from tests.support.unit_tier import FAKE_AND_REAL

Log = AuditLog | FakeAuditLog


@pytest.fixture(params=FAKE_AND_REAL)
def log(request: pytest.FixtureRequest) -> Log:
    if request.param == "fake":
        return FakeAuditLog(max_queue=3)
    backends: Backends = request.getfixturevalue("backends")
    return AuditLog(mongo=backends.mongo, max_queue=3)


def record(
    log: Log,
    organization_id: str,
    n: int,
    *,
    namespace: str = "ns_a",
    environment: str = "development",
) -> None:
    log.record(
        actor_key_id="key_" + str(n),
        actor_peer="",
        organization_id=organization_id,
        environment=environment,
        namespace_id=namespace,
        method="/meshgate.v1.DocumentService/PutDocument",
        resource=f"doc-{n}",
        outcome="OK",
        request_id=f"req-{n}",
        peer_address="ipv4:127.0.0.1:1",
    )


async def test_a_full_queue_refuses_until_it_is_written(log: Log) -> None:
    organization = new_organization_id()
    log.check_room()
    for n in range(3):
        record(log, organization, n)
    with pytest.raises(UnavailableError, match="audit"):
        log.check_room()
    assert log.depth == 3
    await log.flush()
    assert log.depth == 0
    log.check_room()


async def test_events_are_chained_and_listed_newest_first(log: Log) -> None:
    organization = new_organization_id()
    record(log, organization, 1)
    record(log, organization, 2, namespace="ns_b")
    record(log, organization, 3, environment="production")
    await log.flush()
    record(log, organization, 4)
    await log.flush()

    async def page(token: str = "", size: int = 10, **filters: str) -> tuple[list[str], str]:
        items, next_token = await log.list_page(
            organization_id=organization,
            environment="development",
            only_namespaces=frozenset(),
            filters=dict(filters),
            start=None,
            end=None,
            page_size=size,
            page_token=token,
        )
        return [e["request_id"] for e in items], next_token

    assert await page() == (["req-4", "req-2", "req-1"], "")
    first, token = await page(size=2)
    assert first == ["req-4", "req-2"] and token
    assert await page(token, size=2) == (["req-1"], "")
    assert await page(namespace_id="ns_b") == (["req-2"], "")
    assert await page(resource="doc-1", action="PutDocument") == (["req-1"], "")
    report = await log.verify(organization)
    assert report.intact and report.checked == 4 and report.last_sequence == 4
