"""Envoy ext_authz v3 `Check`: another service's request, judged by meshgate's own steps.

The sidecar in front of a service asks before every call. The request is rebuilt as a
`CallState` from the CheckRequest's attributes (the `authorization`, `x-namespace` and
`x-request-id` headers, `:path` and the HTTP method through the route policy file, the
source principal Envoy verified on the downstream certificate as the peer) and run
through the very same step objects as meshgate's own calls: authentication, identity,
permission, namespace, rate limit, credits, audit. The observers see it finish too
(access line, usage, audit trail), so a judged call counts like a direct one.

The asking sidecar speaks only for its binding (bindings.py): a source principal outside
it, or a key of an organization outside it, is PERMISSION_DENIED before any bucket,
credit or namespace is touched.

Allowed: the upstream receives `x-meshgate-organization-id`, `-namespace-id`, `-key-id`
and `-request-id` (never internal_id); any other header the client sent whose name is
`x-meshgate-...` in either spelling (any mix of `-` and `_`, which WSGI/CGI upstreams read
as one variable) is removed, and its `authorization` too unless configured otherwise; the
client receives `ratelimit-*`. Denied: the HTTP status of the gRPC code (401, 403, 404,
429, 503...), the same message meshgate gives, its ErrorInfo reason in
`x-meshgate-error-reason`, `grpc-status`/`grpc-message` for gRPC callers, `retry-after` on
limits.

A route with an entry in dry run (routes.py) is judged by it too, once the entry in force
admitted the call (interceptors/dry_run.py): what it would refuse is recorded, and the
answer is the one of the entry in force. The route policy file is reloaded while the
server runs (server/policy_files.py): `use_routes` swaps the table, and a Check judges
by the table it started with.

What is observed: the call's method is its route's name (from the route policy file) or
NO_ROUTE, a bounded set, so metrics never grow with paths; the path itself goes to the
access line (`path`, redacted like other caller-chosen fields) and, for a matched route,
the audit trail's resource.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import quote

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2
from envoy.type.v3 import http_status_pb2
from google.rpc import status_pb2

from calls.dry_run import DryRunRule
from calls.policy import Access, Policy
from calls.state import CallState
from interceptors.authentication import Authentication
from interceptors.chain import Observer, Step, plan_for
from interceptors.dry_run import DryRunJudge
from interceptors.errors import ErrorMapper, Refusal
from interceptors.namespace import NAMESPACE_HEADER
from interceptors.request_metadata import read_metadata
from interceptors.sidecar.bindings import SidecarBinding
from interceptors.sidecar.routes import RoutePolicies
from interceptors.telemetry import REQUEST_ID_HEADER, Telemetry
from storage.core.errors import InvalidArgumentError, PermissionDeniedError, Reason

__all__ = [
    "ERROR_REASON_HEADER",
    "HTTP_STATUS",
    "NO_ROUTE",
    "UPSTREAM_HEADERS",
    "CheckDecider",
    "SourcePeer",
]

ORGANIZATION_HEADER = "x-meshgate-organization-id"
NAMESPACE_ID_HEADER = "x-meshgate-namespace-id"
KEY_HEADER = "x-meshgate-key-id"
UPSTREAM_REQUEST_ID_HEADER = "x-meshgate-request-id"
# on a denied response: the google.rpc.ErrorInfo reason meshgate gives (docs/api.md)
ERROR_REASON_HEADER = "x-meshgate-error-reason"
UPSTREAM_HEADERS = (
    ORGANIZATION_HEADER,
    NAMESPACE_ID_HEADER,
    KEY_HEADER,
    UPSTREAM_REQUEST_ID_HEADER,
)
# meshgate's own headers in either spelling: `x-meshgate-key-id`, `x_meshgate_key_id`,
# `x-meshgate_key-id`... (WSGI/CGI upstreams read every one of them as HTTP_X_MESHGATE_...)
_OURS = re.compile(r"x[-_]meshgate[-_]")
# the method of a judged call no route matched (a path is never a metric label)
NO_ROUTE = "(no route)"
# the headers the steps decide on; each may appear once (Envoy joins repeats with commas)
_SECURITY_HEADERS = ("authorization", NAMESPACE_HEADER, REQUEST_ID_HEADER)

# gRPC code -> the HTTP status of the denied response
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD


class _NoRouteError(PermissionDeniedError):
    """A route the policy file does not name: refused (fail closed)."""

    default_reason = Reason.METHOD_NOT_DECLARED


class _UnboundError(PermissionDeniedError):
    """The asking sidecar may not speak for this caller (bindings.py)."""

    default_reason = Reason.PEER_NOT_ALLOWED


# the plan of one route's policy: the steps up to authentication, those after it, observers
_Plan = tuple[tuple[Step, ...], tuple[Step, ...], tuple[Observer, ...]]


class SourcePeer:
    """The downstream's identity as Envoy verified it (`attributes.source.principal`: the
    certificate's URI SAN, else DNS SAN, else subject), in the shape the peer step reads
    from a TLS connection; the sidecar's own TLS identity plays no part in the decision."""

    def __init__(self, principal: str) -> None:
        self._auth = {"peer_spiffe_id": [principal.encode()]} if principal else {}

    def auth_context(self) -> Mapping[str, Iterable[bytes]]:
        return self._auth


class CheckDecider:
    """Answers CheckRequests with the request path's steps and the route policy file."""

    def __init__(
        self,
        *,
        routes: RoutePolicies,
        steps: Sequence[Step],
        observers: Sequence[Observer],
        errors: ErrorMapper,
        dry_run: DryRunJudge | None = None,
        remove_authorization: bool = True,
        logger: logging.Logger | None = None,
    ) -> None:
        self._routes = routes
        self._dry_run = dry_run
        self._steps = tuple(steps)
        self._observers = tuple(observers)
        # per policy, the steps and observers that apply (as the chain plans per method)
        self._plans: dict[Policy, _Plan] = {}
        self._errors = errors
        self._remove_authorization = remove_authorization
        self._logger = logger or logging.getLogger("meshgate.ext_authz")

    def use_routes(self, routes: RoutePolicies) -> None:
        """Judge the Checks that start from now on by `routes` (a reloaded file)."""
        self._routes = routes

    async def check(
        self, request: external_auth_pb2.CheckRequest, *, sidecar: SidecarBinding
    ) -> external_auth_pb2.CheckResponse:
        """The decision on one CheckRequest of the sidecar bound by `sidecar`."""
        started = time.perf_counter()
        attributes = request.attributes
        http = attributes.request.http
        headers = _header_names(http)
        path = http.path.partition("?")[0]
        routes = self._routes  # one table for the whole Check, whatever a reload does
        route = routes.match(http.path, http.method)
        call = CallState(
            method=NO_ROUTE if route is None else route.name,
            policy=_UNROUTED,
            request_id="-",
            metadata={},
            peer_address=_address(attributes.source.address),
            started_at=time.time(),
            path=path,
        )
        try:
            call.metadata = read_metadata(_security_headers(http))
            call.request_id = Telemetry.request_id(call.metadata)
            if route is None:
                raise _NoRouteError(
                    "this route has no policy in meshgate's route policy file and is refused"
                )
            # logs, usage and metrics name the route (a bounded set); the audit trail also
            # records the path itself
            call.policy, call.resource = route.policy, path
            principal = attributes.source.principal
            if not sidecar.speaks_for_principal(principal):
                call.set_peer_identity(principal or None)
                raise _UnboundError("this sidecar may not speak for the call's source principal")
            peer = SourcePeer(principal)
            authenticating, after = self._plan(route.policy)[:2]
            for step in authenticating:
                pending = step.check(call, peer)
                if pending is not None:
                    await pending
            key = call.key
            if key is not None and not sidecar.speaks_for_organization(key.organization_id):
                # refused for where it was presented, as a workload-bound key is: audited
                call.key, call.refused_key = None, key
                raise _UnboundError("this sidecar may not speak for the key's organization")
            for step in after:
                pending = step.check(call, peer)
                if pending is not None:
                    await pending
            call.admitted = True
            dry_run = routes.dry_run(http.path, http.method)
            if dry_run is not None and self._dry_run is not None:
                await self._dry_run.judge(
                    call, peer, policy=dry_run.policy, rule=DryRunRule.ROUTE, name=dry_run.name
                )
            return self._allowed(call, headers)
        except Exception as exc:
            refusal = self._errors.refusal_for(exc, request_id=call.request_id)
            call.code, call.reason = refusal.code, refusal.reason
            return self._denied(call, refusal, grpc_caller=_is_grpc(headers))
        finally:
            self._finish(call, started)

    def _allowed(
        self, call: CallState, headers: Mapping[str, str]
    ) -> external_auth_pb2.CheckResponse:
        upstream = {UPSTREAM_REQUEST_ID_HEADER: call.request_id}
        if call.principal is not None:
            upstream[ORGANIZATION_HEADER] = call.principal.organization.organization_id
            upstream[KEY_HEADER] = call.principal.key.key_id
        if call.namespace is not None:
            upstream[NAMESPACE_ID_HEADER] = call.namespace.namespace_id
        remove = sorted(k for k in headers if _OURS.match(k) and k not in upstream)
        if self._remove_authorization and "authorization" in headers:
            remove.append("authorization")
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=grpc.StatusCode.OK.value[0]),
            ok_response=external_auth_pb2.OkHttpResponse(
                headers=list(_options(upstream.items())),
                headers_to_remove=remove,
                response_headers_to_add=list(_options(call.response_metadata)),
            ),
        )

    @staticmethod
    def _denied(
        call: CallState, refusal: Refusal, *, grpc_caller: bool
    ) -> external_auth_pb2.CheckResponse:
        code = refusal.code.value[0]
        sent: list[tuple[str, str]] = [
            (REQUEST_ID_HEADER, call.request_id),
            (ERROR_REASON_HEADER, refusal.reason),
        ]
        sent.extend(call.response_metadata)
        sent.extend((k, v) for k, v in refusal.trailing_metadata if isinstance(v, str))
        if grpc_caller:
            sent.append(("grpc-status", str(code)))
            sent.append(("grpc-message", quote(refusal.message, safe=" ")))
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=code, message=refusal.message),
            denied_response=external_auth_pb2.DeniedHttpResponse(
                status=http_status_pb2.HttpStatus(code=HTTP_STATUS.get(refusal.code, 500)),
                headers=list(_options(sent)),
                body=refusal.message,
            ),
        )

    def _plan(self, policy: Policy) -> _Plan:
        """The steps that apply (split after authentication, where the key's organization
        is known and checked against the sidecar's binding) and the observers."""
        plan = self._plans.get(policy)
        if plan is None:
            steps = plan_for(self._steps, policy)
            split = next(
                (i + 1 for i, step in enumerate(steps) if isinstance(step, Authentication)),
                len(steps),
            )
            plan = self._plans[policy] = (
                steps[:split],
                steps[split:],
                plan_for(self._observers, policy, test="observes"),
            )
        return plan

    def _finish(self, call: CallState, started: float) -> None:
        duration = time.perf_counter() - started
        for observer in self._plan(call.policy)[2]:
            try:
                observer.finish(call, duration)
            except Exception:  # an observer must never change the decision
                self._logger.exception("observer %s failed", type(observer).__name__)
        call.close()


def _header_names(http: Any) -> dict[str, str]:
    """Every request header (lowercased name -> a value), from whichever form Envoy sent."""
    entries = http.header_map.headers
    if entries:
        return {e.key.lower(): e.value or e.raw_value.decode(errors="replace") for e in entries}
    return dict(http.headers)


def _security_headers(http: Any) -> Iterator[tuple[str, str]]:
    """The headers the steps read, as repeated pairs: from `header_map` (Envoy's
    `encode_raw_headers`, one entry per value) when present, else from `headers`, where
    Envoy joined a repeated header's values with commas, so a comma means a repeat."""
    entries = http.header_map.headers
    if entries:
        for entry in entries:
            key = entry.key.lower()
            if key in _SECURITY_HEADERS:
                try:
                    yield key, entry.value or entry.raw_value.decode()
                except UnicodeDecodeError:
                    raise InvalidArgumentError(
                        f"the {key} header is not valid UTF-8",
                        reason=Reason.METADATA_INVALID,
                        metadata={"header": key},
                    ) from None
        return
    for key in _SECURITY_HEADERS:
        value = http.headers.get(key)
        if value is not None:
            for part in value.split(","):
                yield key, part


def _options(pairs: Iterable[tuple[str, str]]) -> Iterator[base_pb2.HeaderValueOption]:
    for key, value in pairs:
        yield base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key=key, value=value), append_action=_OVERWRITE
        )


def _is_grpc(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").startswith("application/grpc")


def _address(address: Any) -> str:
    socket = address.socket_address
    return f"{socket.address}:{socket.port_value}" if socket.address else "-"


# stands in until the route is known (a call refused before that reaches no step)
_UNROUTED = Policy(access=Access.PUBLIC)
