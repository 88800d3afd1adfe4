"""The request path of docs/design.md, built in one place: every step and observer, the
error map, the request decoding and the page-token binding.

The chain (interceptors/chain.py) runs the path for meshgate's own methods and the
ext_authz decider (interceptors/sidecar/check.py) runs the same steps for a sidecar's
question. The path is built from the stores it reads, named by the protocols the steps
take (`PathStores`): the server's components, or, in the unit tier, in-memory stores of
the same protocols (tests/support/request_path.py), so both build the one path.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import trace

from interceptors.audit import AuditQueue, AuditTrail
from interceptors.authentication import Authentication
from interceptors.authorization import Authorization
from interceptors.availability import StoreAvailability
from interceptors.chain import Observer, SecurityChain, Step
from interceptors.credits import CreditDebits, Credits
from interceptors.decoding import MalformedRequests
from interceptors.dry_run import DryRunJudge
from interceptors.errors import ErrorMapper
from interceptors.identity import OrganizationIdentity, Organizations
from interceptors.metrics import Metrics
from interceptors.namespace import Namespaces, NamespaceScope
from interceptors.page_tokens import PageTokenBinding
from interceptors.peer import PeerIdentity
from interceptors.rate_limit import RateLimit
from interceptors.telemetry import Telemetry
from interceptors.usage import CreditCompletions, UsageCounts, UsageObserver
from server.method_policies import method_policies_applied
from server.policies import build_policy_table, undeclared_methods
from server.registry import descriptors, method_needs
from server.settings import Settings
from storage.backends.breaker import StoreBreakers
from storage.core.page_tokens import PageTokens
from storage.core.plans import Plan
from storage.metering.rate_limiter import RateLimiter
from storage.tenancy.key_verifier import KeyVerifier

__all__ = ["PathCredits", "PathStores", "RequestPath", "build_chain", "build_request_path"]

_LOG = logging.getLogger("meshgate.server")


class PathCredits(CreditDebits, CreditCompletions, Protocol):
    """The credit accounts as the path uses them: debited by a step, settled by an observer."""


class PathStores(Protocol):
    """What the request path reads: each store as the step using it takes it."""

    @property
    def verifier(self) -> KeyVerifier: ...

    @property
    def organizations(self) -> Organizations: ...

    @property
    def namespaces(self) -> Namespaces: ...

    @property
    def limiter(self) -> RateLimiter: ...

    @property
    def accounts(self) -> PathCredits: ...

    @property
    def plan_of(self) -> Callable[[str], Plan]: ...

    @property
    def usage(self) -> UsageCounts: ...

    @property
    def audit(self) -> AuditQueue: ...

    @property
    def breakers(self) -> StoreBreakers: ...

    @property
    def metrics(self) -> Metrics: ...

    @property
    def page_tokens(self) -> PageTokens: ...


@dataclass(frozen=True, slots=True)
class RequestPath:
    """The steps and observers of the request path, in order, and what runs around them."""

    steps: tuple[Step, ...]
    observers: tuple[Observer, ...]
    errors: ErrorMapper
    malformed: MalformedRequests
    page_tokens: PageTokenBinding
    # the rate-limit step: the rate-limit service (ShouldRateLimit) draws from its buckets
    rate_limit: RateLimit
    # judges a call by a route's or a method's policy in dry run, with the deciding steps
    dry_run: DryRunJudge


def build_request_path(settings: Settings, stores: PathStores) -> RequestPath:
    """The path, built once per server: peer, availability, authentication, identity,
    authorization, namespace, rate limit, credits, audit; telemetry, usage and audit
    observe every finished call."""
    audit = AuditTrail(log=stores.audit)
    breakers = stores.breakers.breakers
    needs = {
        method: tuple(breakers[store] for store in needed if store in breakers)
        for method, needed in method_needs().items()
    }
    rate_limit = RateLimit(
        limiter=stores.limiter,
        plan_of=stores.plan_of,
        metrics=stores.metrics,
        max_buckets=settings.rate_limit_max_buckets,
    )
    # the steps that decide who may call what (neither spending nor guarding a store)
    deciding = (
        Authentication(verifier=stores.verifier, metrics=stores.metrics),
        OrganizationIdentity(organizations=stores.organizations),
        Authorization(
            internal_peers=settings.internal_peers, sidecar_peers=settings.ext_authz_peers
        ),
        NamespaceScope(namespaces=stores.namespaces),
    )
    return RequestPath(
        steps=(
            PeerIdentity(trusted_proxies=settings.trusted_proxies),
            StoreAvailability(needs=needs),
            *deciding,
            rate_limit,
            Credits(accounts=stores.accounts, plan_of=stores.plan_of, metrics=stores.metrics),
            audit,
        ),
        observers=(
            Telemetry(access_log=logging.getLogger("meshgate.access"), metrics=stores.metrics),
            UsageObserver(usage=stores.usage, accounts=stores.accounts),
            audit,
        ),
        errors=ErrorMapper(
            logger=logging.getLogger("meshgate.errors"),
            on_store_failure=stores.breakers.failed,
            metrics=stores.metrics,
        ),
        malformed=MalformedRequests(
            metrics=stores.metrics, logger=logging.getLogger("meshgate.input")
        ),
        page_tokens=PageTokenBinding(tokens=stores.page_tokens),
        rate_limit=rate_limit,
        dry_run=DryRunJudge(steps=deciding),
    )


def build_chain(
    path: RequestPath, *, settings: Settings, tracer: trace.Tracer | None
) -> SecurityChain:
    """The interceptor that runs `path` for this server's methods; which steps apply to a
    method comes from its policy, declared in the protos (a method without one is refused)
    and narrowed by the method policy file (SettingsError when it would widen one)."""
    declared = build_policy_table(descriptors())
    for method in undeclared_methods(descriptors(), declared):
        _LOG.warning("method %s declares no policy and will refuse every call", method)
    policies, dry_run = method_policies_applied(settings.method_policies, declared)
    chain = SecurityChain(
        policies=policies,
        errors=path.errors,
        steps=path.steps,
        observers=path.observers,
        logger=_LOG,
        tracer=tracer,
        malformed=path.malformed,
        page_tokens=path.page_tokens,
        dry_run=path.dry_run,
    )
    chain.use_policies(policies, dry_run)
    return chain
