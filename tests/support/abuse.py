"""Hostile traffic for the abuse soak (tests/server/test_abuse_soak.py): the attacks of
issue 21 as small async functions, each returning the outcome it saw ("check:403",
"rls:OVER_LIMIT", "UNAUTHENTICATED", ...), workers that run them at bounded concurrency
for a fixed time, and a sampler of the server's own figures (RSS, /metrics series, loop
lag) while they do."""

from __future__ import annotations

import asyncio
import os
import random
import string
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from envoy.service.ratelimit.v3 import rls_pb2
from meshgate.v1 import document_service_pb2 as doc_pb
from meshgate.v1 import document_service_pb2_grpc as doc_grpc
from meshgate.v1 import organization_service_pb2, organization_service_pb2_grpc

from interceptors.request_metadata import MAX_METADATA_BYTES
from interceptors.sidecar.rate_limits import MAX_DESCRIPTORS, MAX_HITS
from storage.core.ids import new_key_id, new_namespace_id, new_organization_id
from storage.core.key_secrets import mint_secret
from tests.support.backups import bomb, import_stream, pieces
from tests.support.clients import auth
from tests.support.envoy import Check, RateLimit, check_request, descriptor, rate_limit_request
from tests.support.pki import Pki
from tests.support.scrape import sample, scrape, series
from tests.support.tenants import Tenant
from tests.support.wire import raw_http2_call

__all__ = [
    "Attack",
    "Hostile",
    "Sampler",
    "Samples",
    "outcome_of",
    "rss_kib",
    "run_workers",
]

Attack = Callable[[], Awaitable[str]]
GET_ORG = "/meshgate.v1.OrganizationService/GetOrganization"
_PRINTABLE = string.ascii_letters + string.digits + "-._~/%;:@!$&'()*+,="


def rss_kib(pid: int) -> int:
    """VmRSS of process `pid`, in KiB (/proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for process {pid}")


def outcome_of(error: BaseException) -> str:
    """A refused call's status name; any other exception's type (a dropped connection)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error.code().name
    return type(error).__name__


def _junk(length: int) -> str:
    return "".join(random.choice(_PRINTABLE) for _ in range(length))


def random_path() -> str:
    """A path no route names: gRPC-shaped, HTTP-shaped, escaped, dotted, very long."""
    shapes = (
        lambda: f"/{_junk(8)}.v1.{_junk(6)}/{_junk(10)}",
        lambda: f"/api/{_junk(12)}/{random.randrange(10**9)}",
        lambda: f"/api/read/..;/{_junk(6)}",
        lambda: f"/%{random.randrange(256):02x}{_junk(5)}",
        lambda: "/" + "a/" * random.randrange(100, 400),
        lambda: f"/{_junk(random.randrange(1, 2000))}",
    )
    return random.choice(shapes)()


def random_credential() -> list[tuple[str, str]]:
    """Headers of a caller without a valid key: none, a well-formed unknown secret (a store
    lookup), garbage, a wrong scheme, a huge one."""
    choices: Sequence[list[tuple[str, str]]] = (
        [],
        [("authorization", f"Bearer {mint_secret('development').secret}")],
        [("authorization", f"Bearer mg_dev_{_junk(40)}_{_junk(6)}")],
        [("authorization", f"Basic {_junk(20)}")],
        [("authorization", "Bearer " + "A" * random.randrange(65, 4000))],
        [("x-api-key", _junk(30))],
    )
    return list(random.choice(choices))


@dataclass
class Hostile:
    """The attacks, against one server: `proxy` and `shop` are the two sidecars' channels
    (the proxy bound to any organization, the shop's to one other), `attacker` a tenant of
    its own whose ADMIN key is the only valid credential the attacks hold, `victim` the
    organization and namespace whose calls must keep succeeding, `revoked` a revoked key's
    secret."""

    port: int
    pki: Pki
    proxy: grpc.aio.Channel
    shop: grpc.aio.Channel
    attacker: Tenant
    attacker_namespace: str
    victim_organization: str
    victim_namespace: str
    revoked: str

    async def check_random_path(self) -> str:
        """Check of a path no route names, with a random credential and principal."""
        principal = random.choice(("", f"spiffe://x/{_junk(20)}", _junk(200)))
        request = check_request(random_path(), random_credential(), principal=principal)
        request.attributes.request.http.method = random.choice(("GET", "POST", _junk(7)))
        response = await Check(self.proxy)(request)
        if response.HasField("ok_response"):
            return "check:ok"
        return f"check:{response.denied_response.status.code}"

    async def check_foreign_from_shop(self) -> str:
        """The bound sidecar asks about a key of an organization outside its binding."""
        request = check_request(
            "/shop.v1.AdminService/Reindex",
            {"authorization": f"Bearer {self.attacker.admin}"},
        )
        response = await Check(self.shop)(request)
        return "check:ok" if response.HasField("ok_response") else "check:denied"

    async def rls_burst(self) -> str:
        """ShouldRateLimit of well-formed descriptors naming unknown organizations (each a
        store lookup), up to 16 of them with up to 100 hits each; one request in five
        malformed: one past either edge, a malformed id, an unknown descriptor key."""
        count = random.choice((1, 4, MAX_DESCRIPTORS))
        hits = random.choice((1, MAX_HITS))

        def one() -> Any:
            extra = random.choice(
                (
                    ("rate_class", random.choice(("data", "admin", "search", "metadata"))),
                    ("namespace_id", new_namespace_id()),
                    ("key_id", new_key_id()),
                )
            )
            return descriptor(("organization_id", new_organization_id()), extra, hits_addend=hits)

        descriptors = [one() for _ in range(count)]
        if random.random() < 0.2:
            flaw = random.randrange(5)
            if flaw == 0:
                descriptors = [one() for _ in range(MAX_DESCRIPTORS + 1)]
            elif flaw == 1:
                descriptors[0].hits_addend.value = MAX_HITS + 1
            elif flaw == 2:
                descriptors[0].entries[0].value = f"org_{_junk(9)}"
            elif flaw == 3:
                descriptors[0].entries.add(key=_junk(6), value=_junk(6))
            else:
                descriptors[0].entries[1].value = _junk(500)
        try:
            answer = await RateLimit(self.proxy)(rate_limit_request(*descriptors))
        except grpc.aio.AioRpcError as error:
            return f"rls:{error.code().name}"
        return f"rls:{rls_pb2.RateLimitResponse.Code.Name(answer.overall_code)}"

    async def rls_drain_victim(self) -> str:
        """The bound sidecar names the victim's organization with every hit it may ask for."""
        many = [
            descriptor(("organization_id", self.victim_organization), hits_addend=MAX_HITS)
            for _ in range(MAX_DESCRIPTORS)
        ]
        try:
            answer = await RateLimit(self.shop)(rate_limit_request(*many))
        except grpc.aio.AioRpcError as error:
            return f"rls:{error.code().name}"
        return f"rls:{rls_pb2.RateLimitResponse.Code.Name(answer.overall_code)}"

    async def api_bad_key(self) -> str:
        """GetOrganization with a random, malformed or revoked key."""
        secret = random.choice(
            (mint_secret("development").secret, _junk(50), self.revoked, "", "Bearer")
        )
        stub = organization_service_pb2_grpc.OrganizationServiceStub(self.attacker.channel)
        try:
            await stub.GetOrganization(
                organization_service_pb2.GetOrganizationRequest(),
                metadata=auth(secret),
                timeout=10,
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK"

    async def foreign_namespace(self) -> str:
        """The attacker's own ADMIN key in an unknown, malformed or the victim's namespace."""
        namespace = random.choice(
            (new_namespace_id(), self.victim_namespace, _junk(30), "ns_" + "x" * 500)
        )
        stub = doc_grpc.DocumentServiceStub(self.attacker.channel)
        request = doc_pb.GetDocumentRequest(document_id="d0")
        try:
            await stub.GetDocument(
                request, metadata=auth(self.attacker.admin, namespace), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code().name
        return "OK"

    async def oversized_metadata(self) -> str:
        """Raw HTTP/2: metadata over the request chain's limit, in one value or in many
        headers, or a random method path (what a gRPC client would refuse to send)."""
        kind = random.randrange(3)
        headers = [(b"authorization", f"Bearer {self.attacker.admin}".encode())]
        path = GET_ORG
        if kind == 0:
            headers.append((b"x-pad", b"a" * (MAX_METADATA_BYTES + random.randrange(1, 4096))))
        elif kind == 1:
            headers += [(f"x-{i}".encode(), b"v" * 100) for i in range(100)]
        else:
            path = f"/{_junk(10)}.{_junk(5)}/{_junk(10)}"
        try:
            seen = await raw_http2_call(self.port, self.pki, path, headers)
        except (AssertionError, OSError, TimeoutError) as error:
            return f"raw:{type(error).__name__}"
        return f"raw:grpc-status={seen.get(b'grpc-status', b'-').decode()}"

    async def restore_bomb(self) -> str:
        """The review's restore bomb into the attacker's own namespace."""
        data = bomb()

        async def chunks() -> Any:
            for piece in pieces(data):
                yield piece

        try:
            await import_stream(self.attacker, self.attacker_namespace, chunks())
        except grpc.aio.AioRpcError as error:
            return f"bomb:{error.code().name}"
        return "bomb:OK"

    def mix(self) -> list[Attack]:
        """The attacks a worker draws from, in proportion (RLS bursts and Check most)."""
        return [
            self.check_random_path,
            self.check_random_path,
            self.check_random_path,
            self.check_foreign_from_shop,
            self.rls_burst,
            self.rls_burst,
            self.rls_drain_victim,
            self.api_bad_key,
            self.api_bad_key,
            self.foreign_namespace,
            self.oversized_metadata,
        ]

    def every_attack(self, rounds: int) -> list[Attack]:
        """Each attack `rounds` times, the bomb once: the warm-up, in which each status code
        an attack ends with is seen (so its series exist before the soak counts them)."""
        return [*dict.fromkeys(self.mix())] * rounds + [self.restore_bomb]


async def run_workers(
    attacks: Callable[[], Attack], *, workers: int, until: float, tally: Counter[str]
) -> None:
    """`workers` loops, each running the attack `attacks()` picks, until time.monotonic()
    passes `until`; every outcome counted in `tally` (an exception by its name)."""

    async def loop() -> None:
        while time.monotonic() < until:
            try:
                tally[await attacks()()] += 1
            except Exception as error:  # an outcome too: counted, the soak goes on
                tally[f"raised:{outcome_of(error)}"] += 1

    await asyncio.gather(*(loop() for _ in range(workers)))


@dataclass(frozen=True, slots=True)
class Samples:
    at: float
    rss_kib: int
    series: frozenset[str] = field(repr=False)
    lag_max_s: float
    fds: int


@dataclass
class Sampler:
    """The server's RSS, its /metrics series count and its loop lag every `every_s`."""

    pid: int
    metrics_port: int
    every_s: float = 0.5
    taken: list[Samples] = field(default_factory=list)

    async def take(self) -> Samples:
        text = await scrape(self.metrics_port)
        taken = Samples(
            at=time.monotonic(),
            rss_kib=rss_kib(self.pid),
            series=frozenset(series(text)),
            lag_max_s=sample(text, "meshgate_event_loop_lag_max_seconds"),
            fds=len(os.listdir(f"/proc/{self.pid}/fd")),
        )
        self.taken.append(taken)
        return taken

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            await self.take()
            await asyncio.sleep(self.every_s)
