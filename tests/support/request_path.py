"""The request path in one process: the very path `server/request_path.py` builds for a
server, on the in-memory stores of tests/support/fakes, called through the chain with a
stand-in for grpc's servicer context. No server, no socket, no store: the unit tier's way
to run whole calls (tests/unit/server/test_request_path.py, tests/unit/interceptors/).

- `PathOnFakes.create()`: the stores (`PathStores`) and the path built from them
- `PathOnFakes.tenant()`: an organization, an API key and a namespace in the fakes
- `Context`: what the chain and the steps use of `grpc.aio.ServicerContext`
- `call_through()`: one unary call through a chain, to a handler, and its outcome
- `call_state()`: a call's state as the chain begins it, for one step on its own
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc.aio import AbortError

from calls.policy import Policy
from calls.state import CallState
from interceptors.chain import SecurityChain
from interceptors.metrics import Metrics
from server.request_path import RequestPath, build_chain, build_request_path
from server.settings import Settings
from storage.backends.breaker import StoreBreaker, StoreBreakers
from storage.core.page_tokens import PageTokens
from storage.core.plans import PlanLookup
from storage.metering.rate_limiter import RateLimiter
from storage.tenancy.key_verifier import KeyVerifier
from storage.tenancy.namespaces import Namespace
from storage.tenancy.organizations import Organization
from tests.support.fakes import (
    FakeAuditLog,
    FakeCreditAccounts,
    FakeKeyRecords,
    FakeLeaseRedis,
    FakeNamespaces,
    FakeOrganizations,
    FakeUsage,
)

__all__ = [
    "CLIENT_AUTH",
    "Context",
    "Outcome",
    "PathOnFakes",
    "Tenant",
    "call_state",
    "call_through",
]

# the TLS peer of a call, as grpc's auth_context() gives it for the test client certificate
CLIENT_AUTH: Mapping[str, Sequence[bytes]] = {
    "peer_spiffe_id": [b"spiffe://meshgate.test/client"],
    "transport_security_type": [b"ssl"],
}


async def _answers() -> None:
    """A store probe that always answers (the breakers start closed and stay so)."""


@dataclass
class PathOnFakes:
    """`PathStores` of in-memory stores, and the request path built from them."""

    settings: Settings
    keys: FakeKeyRecords
    verifier: KeyVerifier
    organizations: FakeOrganizations
    namespaces: FakeNamespaces
    lease_redis: FakeLeaseRedis
    limiter: RateLimiter
    accounts: FakeCreditAccounts
    plan_of: PlanLookup
    usage: FakeUsage
    audit: FakeAuditLog
    breakers: StoreBreakers
    metrics: Metrics
    page_tokens: PageTokens
    path: RequestPath = field(init=False)

    def __post_init__(self) -> None:
        self.path = build_request_path(self.settings, self)

    @classmethod
    def create(cls, settings: Settings | None = None) -> PathOnFakes:
        settings = settings or Settings()
        keys, lease_redis = FakeKeyRecords(), FakeLeaseRedis()
        return cls(
            settings=settings,
            keys=keys,
            verifier=KeyVerifier(keys=keys, accepted_environments=settings.environments),
            organizations=FakeOrganizations(),
            namespaces=FakeNamespaces(),
            lease_redis=lease_redis,
            limiter=RateLimiter(redis=lease_redis),
            accounts=FakeCreditAccounts(),
            plan_of=PlanLookup(settings.plans, settings.default_plan),
            usage=FakeUsage(),
            audit=FakeAuditLog(),
            breakers=StoreBreakers(
                {name: StoreBreaker(name=name, probe=_answers) for name in ("mongodb", "qdrant")}
            ),
            metrics=Metrics(),
            page_tokens=PageTokens((secrets.token_bytes(32),)),
        )

    def chain(self) -> SecurityChain:
        return build_chain(self.path, settings=self.settings, tracer=None)

    async def tenant(
        self,
        *,
        plan: str = "pro",
        permissions: Iterable[str] = ("admin",),
        environment: str = "development",
        namespace_ids: Iterable[str] = (),
    ) -> Tenant:
        organization = await self.organizations.create(name="acme", plan=plan)
        namespace = await self.namespaces.create(
            internal_id=organization.internal_id, name="orders", environment=environment
        )
        key, secret = await self.keys.create(
            organization_id=organization.organization_id,
            name="test",
            environment=environment,
            permissions=frozenset(permissions),
            namespace_ids=list(namespace_ids),
            expires_at=None,
        )
        return Tenant(organization, namespace, key.key_id, secret)


@dataclass(frozen=True)
class Tenant:
    organization: Organization
    namespace: Namespace
    key_id: str
    secret: str

    def metadata(self, *, namespace: bool = True) -> tuple[tuple[str, str], ...]:
        """The call metadata of this tenant's key (and its namespace)."""
        headers = [("authorization", f"Bearer {self.secret}")]
        if namespace:
            headers.append(("x-namespace", self.namespace.namespace_id))
        return tuple(headers)


class Context:
    """What the chain and the steps use of `grpc.aio.ServicerContext`: the request
    metadata, the peer and its TLS auth context; trailing metadata and the status are kept
    as grpc keeps them, and `abort` raises `AbortError` as grpc.aio does."""

    def __init__(
        self,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        *,
        auth: Mapping[str, Sequence[bytes]] = CLIENT_AUTH,
        peer: str = "ipv4:127.0.0.1:50000",
    ) -> None:
        self._metadata = tuple(metadata)
        self._auth = auth
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: tuple[tuple[str, str | bytes], ...] = ()

    def invocation_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._metadata

    def peer(self) -> str:
        return self._peer

    def auth_context(self) -> Mapping[str, Sequence[bytes]]:
        return self._auth

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, str | bytes]]) -> None:
        self.trailing = tuple(metadata)

    def code(self) -> grpc.StatusCode | None:
        return self._code

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        self._code, self.details = code, details
        if trailing_metadata:
            self.trailing = tuple(trailing_metadata)
        raise AbortError()


@dataclass(frozen=True)
class Outcome:
    code: grpc.StatusCode
    details: str
    trailing: dict[str, str | bytes]
    response: Any = None


@dataclass
class _Details:
    """grpc.HandlerCallDetails: the method and its request metadata."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...]


async def call_through(
    chain: SecurityChain,
    method: str,
    request: bytes = b"",
    *,
    handler: Callable[[Any, Any], Awaitable[Any]],
    metadata: Sequence[tuple[str, str | bytes]] = (),
    auth: Mapping[str, Sequence[bytes]] = CLIENT_AUTH,
    decode: Callable[[bytes], Any] | None = None,
) -> Outcome:
    """One unary call of `method` through `chain` to `handler`, as grpc.aio would run it:
    the chain wraps the method's handler, then the wrapped handler serves the raw request."""
    context = Context(metadata, auth=auth)

    async def continuation(_: Any) -> grpc.RpcMethodHandler[Any, Any]:
        return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=decode)

    wrapped = await chain.intercept_service(continuation, _Details(method, tuple(metadata)))
    assert wrapped is not None and wrapped.unary_unary is not None
    try:
        servicer_context: Any = context
        response = await wrapped.unary_unary(request, servicer_context)
    except AbortError:
        code = context.code()
        assert code is not None
        return Outcome(code, context.details, dict(context.trailing))
    return Outcome(grpc.StatusCode.OK, "", dict(context.trailing), response)


def call_state(
    policy: Policy,
    *,
    method: str = "/test.v1.Things/Do",
    metadata: Mapping[str, str] | None = None,
    peer_identity: str | None = None,
) -> CallState:
    """A call of `method` under `policy` as the chain begins it (request id set, no step
    run yet); the peer identity as the peer step would have set it."""
    call = CallState(
        method=method,
        policy=policy,
        request_id="req-" + secrets.token_hex(4),
        metadata=dict(metadata or {}),
        peer_address="ipv4:127.0.0.1:50000",
        started_at=time.time(),
    )
    call.set_peer_identity(peer_identity)
    return call
