"""Traffic for the fault-injection suite (tests/faults/), and the table of what each fault did.

`Traffic` runs bounded load on every replica of a cluster: one worker per replica
creates and reads documents of one organization (every id created OK is kept: an
acknowledged write), another spends a small monthly allowance of a second
organization with 1-credit calls. A test starts it, injects its fault, ends it, and
asks: what happened to the calls that started during the fault, when every replica
served again, whether every acknowledged write is readable, how many credits were
admitted against the allowance.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections import Counter
from dataclasses import dataclass, field
from itertools import count

import grpc
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc
from meshgate.v1 import (
    namespace_service_pb2,
    namespace_service_pb2_grpc,
    usage_service_pb2,
    usage_service_pb2_grpc,
)

from tests.support.clients import auth, client_credentials
from tests.support.cluster import Cluster, limits
from tests.support.load import Load, Window
from tests.support.namespace_clients import doc
from tests.support.pki import Pki
from tests.support.processes import MongoEngine, Replica

__all__ = [
    "ALLOWANCE",
    "CALL_TIMEOUT_S",
    "CLUSTER_ENV",
    "PLANS",
    "FaultCluster",
    "FaultRow",
    "Traffic",
    "fault_table",
]

CALL_TIMEOUT_S = 8.0
# the plans of the suite's cluster: documents on a large plan, credits spent on a small one
ALLOWANCE = 200
PLANS = {
    "large": {"monthly_credits": 10_000_000, "limits": limits(10_000, 10_000)},
    "small": {"monthly_credits": ALLOWANCE, "limits": limits(10_000, 10_000)},
}
# deliveries fail fast and are retried for about 7 s
CLUSTER_ENV = {
    "MESHGATE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
    "MESHGATE_WEBHOOK_TIMEOUT_S": "1",
    "MESHGATE_WEBHOOK_RETRY_SCHEDULE": "200ms,300ms,500ms,1s,1s,1s,1s,1s,1s,1s",
}


@dataclass
class FaultCluster:
    """Three replicas, their redis-server, and a MongoDB engine process of their own."""

    cluster: Cluster
    mongo: MongoEngine


@dataclass(frozen=True)
class FaultRow:
    fault: str
    during: Window  # the document calls that started during the fault
    recovered_s: float | None  # from the end of the fault until every replica served again
    admitted: int  # credits admitted to the small organization
    allowance: int
    note: str = ""

    def cells(self) -> list[str]:
        codes = ", ".join(f"{code} {n}" for code, n in sorted(self.during.codes.items()))
        recovered = "-" if self.recovered_s is None else f"{self.recovered_s:.2f} s"
        over = self.admitted - self.allowance
        credits = f"{self.admitted} of {self.allowance}" + (f" (+{over})" if over > 0 else "")
        return [
            self.fault,
            codes or "-",
            f"{self.during.p99_s() * 1000:.0f} ms",
            f"{self.during.slowest_s() * 1000:.0f} ms",
            recovered,
            credits,
            self.note,
        ]


def fault_table(rows: list[FaultRow]) -> str:
    header = [
        "fault",
        "document calls during the fault",
        "p99",
        "slowest",
        "calls OK again after",
        "credits admitted",
        "notes",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row.cells()) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Traffic:
    replicas: list[Replica]
    pki: Pki
    docs_secret: str
    docs_namespace: str
    credit_secret: str
    credit_namespace: str
    pause_s: float = 0.02
    acked: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.channels = [
            grpc.aio.secure_channel(r.target, client_credentials(self.pki)) for r in self.replicas
        ]
        self._docs = [doc_grpc.DocumentServiceStub(c) for c in self.channels]
        self._namespaces = [
            namespace_service_pb2_grpc.NamespaceServiceStub(c) for c in self.channels
        ]
        self._docs_md = auth(self.docs_secret, self.docs_namespace)
        self._credit_md = auth(self.credit_secret, self.credit_namespace)
        self._sequence = count()
        self._run = secrets.token_hex(3)
        self.documents = Load(
            call=self._document_call, workers=len(self.replicas), pause_s=self.pause_s
        )
        self.credits = Load(
            call=self._credit_call, workers=len(self.replicas), pause_s=self.pause_s
        )

    def document_stub(self, replica: int) -> doc_grpc.DocumentServiceAsyncStub:
        return self._docs[replica]

    def docs_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._docs_md

    async def _document_call(self, worker: int) -> None:
        n = next(self._sequence)
        stub = self._docs[worker]
        if n % 2 == 0 or not self.acked:
            document_id = f"{self._run}-{worker}-{n}"
            await stub.CreateDocument(
                doc_pb.CreateDocumentRequest(document=doc(document_id, {"n": n})),
                metadata=self._docs_md,
                timeout=CALL_TIMEOUT_S,
            )
            self.acked.add(document_id)
        else:
            await stub.GetDocument(
                doc_pb.GetDocumentRequest(document_id=next(iter(self.acked))),
                metadata=self._docs_md,
                timeout=CALL_TIMEOUT_S,
            )

    async def _credit_call(self, worker: int) -> None:
        await self._namespaces[worker].GetNamespace(
            namespace_service_pb2.GetNamespaceRequest(),
            metadata=self._credit_md,
            timeout=CALL_TIMEOUT_S,
        )

    def start(self) -> None:
        self.documents.start()
        self.credits.start()

    async def stop(self) -> None:
        await self.documents.stop()
        await self.credits.stop()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)

    def admitted(self) -> int:
        return sum(1 for s in self.credits.samples if s.code == "OK")

    def admitted_between(self, start: float, end: float) -> int:
        """Credits admitted by calls that finished between two moments."""
        return sum(
            1
            for s in self.credits.samples
            if s.code == "OK" and start <= s.started + s.seconds < end
        )

    def credit_bound(self, allowance: int, lost_at: float, replicas: int) -> int:
        """docs/limits.md's bound on a Redis data loss at `lost_at`: the debits of about one
        flush interval before it (not in the ledger yet), and the reservations replicas
        held (each at most 1/16 of what was left)."""
        return (
            allowance
            + self.admitted_between(lost_at - 1.5, lost_at)
            + replicas * math.ceil(allowance / 16)
        )

    async def unreadable(self, replica: int) -> set[str]:
        """The acknowledged writes that a replica cannot list now."""
        listed: set[str] = set()
        token = ""
        while True:
            page = await self._docs[replica].ListDocuments(
                doc_pb.ListDocumentsRequest(page_size=100, page_token=token),
                metadata=self._docs_md,
                timeout=CALL_TIMEOUT_S,
            )
            listed.update(d.document_id for d in page.documents)
            token = page.next_page_token
            if not token:
                return self.acked - listed

    async def credit_balance(self, replica: int) -> usage_service_pb2.CreditBalance:
        stub = usage_service_pb2_grpc.UsageServiceStub(self.channels[replica])
        response = await stub.GetCreditBalance(
            usage_service_pb2.GetCreditBalanceRequest(), metadata=self._credit_md, timeout=5
        )
        return response.balance

    def codes_between(self, start: float, end: float) -> Counter[str]:
        return self.documents.window(start, end).codes

    async def wait_for_admitted(self, target: int, timeout_s: float = 20.0) -> None:
        """Until `target` credits of the small organization were admitted."""
        deadline = time.monotonic() + timeout_s
        while self.admitted() < target:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {self.admitted()} credits admitted in {timeout_s}s")
            await asyncio.sleep(0.02)
