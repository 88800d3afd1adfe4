"""Verification analytics through two live replicas on one MongoDB and one Redis: usage by
key and outcome equals what was sent, keys are seen only within reach, and calls with an
unknown key count for no organization."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import grpc
import pytest
from meshgate.v1 import (
    common_pb2,
    document_service_pb2,
    document_service_pb2_grpc,
    key_service_pb2,
    key_service_pb2_grpc,
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    options_pb2,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from server.app import RunningServer
from server.backends import Backends
from server.settings import Settings
from storage.core.key_secrets import mint_secret
from tests.support.clients import auth, raw_unary
from tests.support.log_guard import NEVER_LOGGED
from tests.support.pki import Pki
from tests.support.scrape import scrape
from tests.support.servers import serving
from tests.support.tenants import Tenant

OUTCOMES = {v: k.removeprefix("USAGE_OUTCOME_") for k, v in usage_service_pb2.UsageOutcome.items()}
GET_NS = namespace_service_pb2.GetNamespaceRequest()
CREATE = "/meshgate.v1.DocumentService/CreateDocument"


@pytest.fixture(scope="module")
async def second(
    settings: Settings, pki: Pki
) -> AsyncIterator[tuple[RunningServer, grpc.aio.Channel]]:
    """A second replica in this process, on the session's MongoDB and Redis."""
    async with serving(settings, pki) as (running, _, channel):
        yield running, channel


class Caller:
    """One key calling both replicas in turn; every answer tallied as (key, outcome)."""

    def __init__(
        self,
        key_id: str,
        secret: str,
        channels: list[grpc.aio.Channel],
        sent: Counter[tuple[str, str]],
    ) -> None:
        self.key_id, self.secret, self.channels, self.sent = key_id, secret, channels, sent
        self.turn = 0

    def _channel(self) -> grpc.aio.Channel:
        self.turn += 1
        return self.channels[self.turn % len(self.channels)]

    async def expect(self, outcome: str, code: grpc.StatusCode, call: object) -> None:
        try:
            await call  # type: ignore[misc]
            got = grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            got = error.code()
        assert got == code, (outcome, got)
        self.sent[(self.key_id, outcome)] += 1

    async def get_namespace(self, namespace: str, outcome: str, code: grpc.StatusCode) -> None:
        stub = namespace_service_pb2_grpc.NamespaceServiceStub(self._channel())
        await self.expect(
            outcome, code, stub.GetNamespace(GET_NS, metadata=auth(self.secret, namespace))
        )

    async def create(self, namespace: str | None, outcome: str, code: grpc.StatusCode) -> None:
        stub = document_service_pb2_grpc.DocumentServiceStub(self._channel())
        request = document_service_pb2.CreateDocumentRequest(
            document=document_service_pb2.Document()
        )
        await self.expect(
            outcome, code, stub.CreateDocument(request, metadata=auth(self.secret, namespace))
        )

    async def corrupt(self, namespace: str) -> None:
        """A request body that does not decode (read only after every step admitted it)."""
        call = raw_unary(self._channel(), CREATE)(
            b"\xff\xff\xff\xff", metadata=auth(self.secret, namespace)
        )
        await self.expect("MALFORMED", grpc.StatusCode.INVALID_ARGUMENT, call)

    async def burst(self, namespace: str, count: int) -> None:
        """Calls against the key's own small bucket: each OK or RATE_LIMITED, as answered."""
        for _ in range(count):
            stub = namespace_service_pb2_grpc.NamespaceServiceStub(self._channel())
            try:
                await stub.GetNamespace(GET_NS, metadata=auth(self.secret, namespace))
                self.sent[(self.key_id, "OK")] += 1
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error.details()
                self.sent[(self.key_id, "RATE_LIMITED")] += 1


async def usage_by_key_and_outcome(
    channel: grpc.aio.Channel, secret: str, key_ids: list[str] | None = None
) -> dict[tuple[str, str], int]:
    response = await usage_service_pb2_grpc.UsageServiceStub(channel).GetUsage(
        usage_service_pb2.GetUsageRequest(
            group_by=[usage_service_pb2.USAGE_GROUP_KEY, usage_service_pb2.USAGE_GROUP_OUTCOME],
            key_ids=key_ids or [],
        ),
        metadata=auth(secret),
    )
    return {(row.key_id, OUTCOMES[row.outcome]): row.calls for row in response.rows}


async def test_usage_by_key_and_outcome_equals_what_was_sent_across_two_replicas(
    tenant: Tenant, server: RunningServer, second: tuple[RunningServer, grpc.aio.Channel]
) -> None:
    replica, other = second
    channels = [tenant.channel, other]
    ns = await tenant.namespace()
    keys = key_service_pb2_grpc.KeyServiceStub(tenant.channel)

    async def key(
        name: str,
        permission: options_pb2.Permission.ValueType,
        namespaces: tuple[str, ...] = (),
        rate_limit: key_service_pb2.RateLimit | None = None,
    ) -> key_service_pb2.CreateKeyResponse:
        created = await keys.CreateKey(
            key_service_pb2.CreateKeyRequest(
                name=name,
                environment=common_pb2.ENVIRONMENT_DEVELOPMENT,
                permissions=[permission],
                namespaces=namespaces,
                rate_limit=rate_limit,
            ),
            metadata=auth(tenant.admin),
        )
        NEVER_LOGGED.add(created.secret)
        return created

    # a reader with a small bucket of its own, a writer restricted to the namespace, a key
    # that gets revoked, and an ADMIN key restricted to the namespace (who reaches the writer)
    small_bucket = key_service_pb2.RateLimit(per_second=0.1, burst=3)
    reader = await key("reader", options_pb2.PERMISSION_READ, rate_limit=small_bucket)
    writer = await key("writer", options_pb2.PERMISSION_WRITE, namespaces=(ns.name,))
    doomed = await key("doomed", options_pb2.PERMISSION_READ)
    restricted = await key("restricted", options_pb2.PERMISSION_ADMIN, namespaces=(ns.name,))
    sent: Counter[tuple[str, str]] = Counter()
    r, w, d = (Caller(k.key.key_id, k.secret, channels, sent) for k in (reader, writer, doomed))
    OK, DENIED, NOT_FOUND = (
        grpc.StatusCode.OK,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.NOT_FOUND,
    )
    UNAUTHENTICATED, INVALID = grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT

    for _ in range(2):
        await r.create(ns.name, "PERMISSION_DENIED", DENIED)  # READ cannot write
        await r.get_namespace("no-such-namespace", "NOT_FOUND", NOT_FOUND)
        await w.create(ns.name, "OK", OK)
        await w.create(None, "MALFORMED", INVALID)  # no x-namespace
        await w.corrupt(ns.name)
        await w.create("no-such-namespace", "NOT_FOUND", NOT_FOUND)
        await d.get_namespace(ns.name, "OK", OK)
    await r.burst(ns.name, 6)  # 3 in the bucket, then refused (one refill in 10 s)
    assert sent[(reader.key.key_id, "RATE_LIMITED")] >= 2
    await keys.RevokeKey(
        key_service_pb2.RevokeKeyRequest(key_id=doomed.key.key_id), metadata=auth(tenant.admin)
    )
    for _ in range(3):  # refused alike on both replicas (the revocation reaches the other)
        await d.get_namespace(ns.name, "UNAUTHENTICATED", UNAUTHENTICATED)

    # every replica stores its last second (each also does so every second by itself)
    await server.flush_usage()
    await replica.flush_usage()
    ours = [reader.key.key_id, writer.key.key_id, doomed.key.key_id]
    seen = await usage_by_key_and_outcome(other, tenant.admin, ours)
    print("\nGetUsage(group_by=[KEY, OUTCOME], key_ids=[reader, writer, doomed]):")
    names = {reader.key.key_id: "reader", writer.key.key_id: "writer", doomed.key.key_id: "doomed"}
    for (key_id, outcome), calls in sorted(seen.items()):
        print(f"  {key_id} ({names[key_id]:7}) {outcome:18} {calls}")
    assert seen == dict(sent)

    # unfiltered, the ADMIN key sees its own calls too, and the restricted ADMIN key sees
    # only the key within its reach (the writer, restricted to its namespace)
    everything = await usage_by_key_and_outcome(tenant.channel, tenant.admin)
    assert {k for k, _ in everything} == {*ours, tenant.admin_key_id}
    # (of the writer's calls, those in its namespace: a restricted key sees no calls outside
    # its namespaces, and a call refused before its namespace was resolved is in none)
    within = await usage_by_key_and_outcome(other, restricted.secret)
    assert within == {(writer.key.key_id, "OK"): 2, (writer.key.key_id, "MALFORMED"): 2}
    assert (
        await usage_by_key_and_outcome(tenant.channel, restricted.secret, [reader.key.key_id]) == {}
    )
    # the outcome filter
    only = await usage_service_pb2_grpc.UsageServiceStub(other).GetUsage(
        usage_service_pb2.GetUsageRequest(
            group_by=[usage_service_pb2.USAGE_GROUP_KEY],
            key_ids=ours,
            outcomes=[
                usage_service_pb2.USAGE_OUTCOME_NOT_FOUND,
                usage_service_pb2.USAGE_OUTCOME_MALFORMED,
            ],
        ),
        metadata=auth(tenant.admin),
    )
    assert {row.key_id: row.calls for row in only.rows} == {
        reader.key.key_id: 2,
        writer.key.key_id: 6,
    }


async def test_calls_with_an_unknown_key_count_for_no_organization(
    tenant: Tenant,
    server: RunningServer,
    backends: Backends,
    second: tuple[RunningServer, grpc.aio.Channel],
) -> None:
    """A well-formed key that does not exist, one that fails its checksum, and none at all:
    counted once each under the unattributed bucket (organization and key ""), never under
    anything the caller sent, and in no organization's GetUsage."""
    replica, other = second
    usage = backends.mongo.database["usage"]
    method = "/meshgate.v1.NamespaceService/GetNamespace"

    async def unattributed() -> int:
        await server.flush_usage()
        await replica.flush_usage()
        total = 0
        async for doc in usage.find({"organization_id": "", "method": method}):
            assert doc["key_id"] == "" and doc["environment"] == ""
            total += int(doc["calls"])
        return total

    before = await unattributed()
    unknown = mint_secret("development").secret
    bad_checksum = unknown[:-1] + ("x" if unknown[-1] != "x" else "y")
    NEVER_LOGGED.update((unknown, bad_checksum))
    for channel in (tenant.channel, other):
        for metadata in (auth(unknown, "ns"), auth(bad_checksum, "ns"), (("x-namespace", "ns"),)):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await namespace_service_pb2_grpc.NamespaceServiceStub(channel).GetNamespace(
                    GET_NS, metadata=metadata
                )
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert await unattributed() == before + 6
    assert await usage.count_documents({"key_id": {"$regex": "^mg_"}}) == 0
    for _ in range(2):  # the second answered from the key cache
        seen = await usage_by_key_and_outcome(tenant.channel, tenant.admin)
        assert all(k.startswith("key_") for k, _ in seen), seen
    # the authentication step's latency, by cache hit and miss, from the metrics listener
    text = await scrape(server.metrics_port)
    counts = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meshgate_authentication_duration_seconds_count{")
    }
    assert set(counts) == {"hit", "miss"} and min(counts.values()) > 0, counts
