"""A replica killed with SIGKILL while calls are in flight on it: those calls fail at
once (they do not hang), the other replicas serve on, every write acknowledged before
the kill (on any replica) is readable, and credits stay within the allowance. A new
replica then takes the dead one's place."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from meshgate.v1 import document_service_pb2 as doc_pb

from tests.support.faults import ALLOWANCE, CALL_TIMEOUT_S, FaultCluster, FaultRow, Traffic
from tests.support.namespace_clients import doc

pytestmark = pytest.mark.slow

VICTIM = 2


async def test_a_replica_killed_mid_call(
    fault_cluster: FaultCluster, traffic: Traffic, fault_rows: list[FaultRow]
) -> None:
    traffic.start()
    await asyncio.sleep(1.0)
    stub = traffic.document_stub(VICTIM)
    md = traffic.docs_metadata()

    async def create(i: int) -> tuple[str, str, float]:
        started = time.monotonic()
        document_id = f"mid-call-{i}"
        try:
            await stub.CreateDocument(
                doc_pb.CreateDocumentRequest(document=doc(document_id)),
                metadata=md,
                timeout=CALL_TIMEOUT_S,
            )
            traffic.acked.add(document_id)
            return document_id, "OK", time.monotonic() - started
        except grpc.aio.AioRpcError as error:
            return document_id, error.code().name, time.monotonic() - started

    in_flight = [asyncio.create_task(create(i)) for i in range(8)]
    await asyncio.sleep(0.005)
    killed = time.monotonic()
    victim = fault_cluster.cluster.replicas[VICTIM].process
    victim.kill()
    outcomes = await asyncio.gather(*in_flight)
    await asyncio.sleep(2.0)
    await traffic.stop()
    await asyncio.to_thread(victim.wait, 10)
    fault_cluster.cluster.replace_replica(VICTIM)

    survivors = range(VICTIM)
    before = traffic.documents.window(0, killed)
    during = traffic.documents.window(killed, killed + 2.0)
    on_survivors = [s for s in during.samples if s.worker in survivors]
    cut = [o for o in outcomes if o[1] != "OK"]
    admitted = traffic.admitted()
    fault_rows.append(
        FaultRow(
            "replica SIGKILL mid-call",
            during,
            0.0,
            admitted,
            ALLOWANCE,
            note=f"{len(cut)} of {len(outcomes)} calls in flight cut, the slowest answered in"
            f" {max(o[2] for o in outcomes) * 1000:.0f} ms; the others never failed",
        )
    )
    assert {s.code for s in on_survivors} == {"OK"}
    assert {code for _, code, _ in outcomes} <= {"OK", "UNAVAILABLE"}
    # cut calls fail at once, they do not hang (beyond this machine's noise)
    assert max(seconds for _, _, seconds in outcomes) < 1.0 + before.slowest_s()
    assert await traffic.unreadable(0) == set()
    assert admitted <= ALLOWANCE
