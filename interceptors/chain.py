"""The request path as one grpc.aio interceptor.

Each step (peer, authentication, identity, authorization, namespace, rate
limit, credits, audit) is a small object whose `check(call, context)` raises
a typed error to refuse the call. A step decides from what this process
already knows (cached keys, organizations, namespaces, leased tokens,
reserved credits) synchronously and returns None; only when it needs I/O
does it return an awaitable, which the chain awaits. So a warm call runs the
whole chain without a single suspension.
The chain wraps each method handler once, runs telemetry around everything,
the steps in order, then the servicer, and turns every refusal or error into
`context.abort(...)` through the errors step. Which steps and observers apply to
a method is decided once, from the method's declared policy (read from the
protos), when its handler is wrapped: its plan is the tuple of those that
apply, so a step that does not apply never runs and no call branches on its
policy. A method with no policy is refused (fail closed). A method's policy in dry run
(server/method_policies.py) judges it once admitted (interceptors/dry_run.py).

The request message is decoded here, once every step has admitted the call
(interceptors/decoding.py): grpc hands the chain the raw bytes, so a caller the
steps refuse never makes the server parse a body. The headers are read once,
before any step (interceptors/request_metadata.py). A List method's page token is
opened after decoding and the next one sealed after the servicer answered
(interceptors/page_tokens.py), so the servicers and stores see only their cursors.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc
from grpc.aio import AbortError
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract

from calls.dry_run import DryRunRule
from calls.policy import Access, Policy
from calls.state import CallState, current_call
from interceptors.decoding import Decoder, MalformedRequests
from interceptors.dry_run import DryRunJudge
from interceptors.errors import ErrorMapper
from interceptors.page_tokens import PageTokenBinding
from interceptors.request_metadata import (
    MAX_METADATA_BYTES,
    UndecodableHeaderError,
    read_metadata,
)
from interceptors.steps import Observer, Step, plan_for
from interceptors.telemetry import (
    REQUEST_ID_HEADER,
    SERVER_ERRORS,
    TRACEPARENT_HEADER,
    Telemetry,
    peer_attributes,
)
from storage.core.errors import MeshgateError, PermissionDeniedError, Reason

__all__ = ["MAX_METADATA_BYTES", "Observer", "SecurityChain", "Step", "plan_for"]

Context = grpc.aio.ServicerContext[Any, Any]


# the call's request metadata as grpc handed it to `intercept_service` (same task as
# the handler), so the handler need not convert it from the C core a second time
_invocation_metadata: ContextVar[Sequence[tuple[str, str | bytes]] | None] = ContextVar(
    "meshgate_invocation_metadata", default=None
)


def _metadata(context: Context) -> dict[str, str]:
    raw: Iterable[tuple[str, Any]] = (
        _invocation_metadata.get() or context.invocation_metadata() or ()
    )
    return read_metadata(raw)


class SecurityChain(grpc.aio.ServerInterceptor):
    def __init__(
        self,
        *,
        policies: Mapping[str, Policy],
        errors: ErrorMapper,
        steps: Sequence[Step],
        observers: Sequence[Observer],
        logger: logging.Logger,
        tracer: trace.Tracer | None = None,
        malformed: MalformedRequests | None = None,
        page_tokens: PageTokenBinding | None = None,
        dry_run: DryRunJudge | None = None,
    ) -> None:
        self._policies = policies
        self._dry_run_policies: Mapping[str, Policy] = {}
        self._dry_run = dry_run
        self._errors = errors
        self._steps = tuple(steps)
        self._observers = tuple(observers)
        self._tracer = tracer
        self._logger = logger
        self._malformed = malformed or MalformedRequests(metrics=None, logger=logger)
        self._pages = page_tokens
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def use_policies(
        self, policies: Mapping[str, Policy], dry_run: Mapping[str, Policy] | None = None
    ) -> None:
        """The method -> policy table (and the policies in dry run) for the calls that
        start from now on; calls in flight finish under the one they started with."""
        self._policies, self._dry_run_policies = policies, dry_run or {}
        self._wrapped = {}

    async def intercept_service(
        self,
        continuation: Callable[
            [grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]
        ],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        _invocation_metadata.set(handler_call_details.invocation_metadata)
        method = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        policy = self._policies.get(method)
        wrapped = self._wrap(method, policy, handler)
        self._wrapped[method] = wrapped
        return wrapped

    # -- one call -----------------------------------------------------------------

    async def _serve(self, route: _Route, request: Any, context: Context) -> Any:
        """One call, unary or streaming (the handler grpc runs, bound to its route): begin,
        admit (every step in order, awaiting only those that need I/O), decode the request
        (raw bytes until then), open a List method's page token, respond, seal the next
        one; an error becomes a refusal (`context.abort`, through the errors step; an
        abort passes as it is); the call is finished whatever happened."""
        started = time.perf_counter()
        call: CallState | None = None
        try:
            call, failure = self._begin(route.method, route.policy, context)
            if failure is not None:
                raise failure
            for step in route.steps:
                pending = step.check(call, context)
                if pending is not None:
                    await pending
            call.admitted = True
            if route.dry_run is not None and self._dry_run is not None:
                await self._dry_run.judge(
                    call, context, policy=route.dry_run, rule=DryRunRule.METHOD, name=route.method
                )
            if route.decoder is not None:
                if route.request_streaming:
                    request = self._malformed.decode_stream(route.decoder, request, route.method)
                else:
                    request = self._malformed.decode(route.decoder, request, route.method)
            if route.keep_request:
                call.request = request
            binding = route.pages.open(call, request) if route.pages is not None else None
            # the response metadata travels in the trailers, set once (a refusal sets its own)
            context.set_trailing_metadata(
                ((REQUEST_ID_HEADER, call.request_id), *call.response_metadata)
            )
            response = await route.respond(request, context)
            if binding is not None:
                binding.seal(response)
            return response
        except AbortError:
            raise
        except Exception as exc:
            await self._refuse(call, exc, context)
        finally:
            self._finish(call, route.observers, started, context)

    def _begin(
        self, method: str, policy: Policy | None, context: Context
    ) -> tuple[CallState, MeshgateError | None]:
        """The call's state (request id first, so every refusal carries it), and the reason
        to refuse it before any step runs, if there is one."""
        metadata: dict[str, str] = {}
        failure: MeshgateError | None = None
        try:
            metadata = _metadata(context)
        except MeshgateError as exc:
            failure = exc
            if isinstance(exc, UndecodableHeaderError):
                self._malformed.seen(method, "metadata")
        call = CallState(
            method=method,
            policy=policy or _UNDECLARED,
            request_id=Telemetry.request_id(metadata),
            metadata=metadata,
            peer_address=context.peer(),
            started_at=time.time(),
        )
        current_call.set(call)
        if self._tracer is not None:
            self._start_span(call)
        elif TRACEPARENT_HEADER in metadata:
            # not tracing, but what the call starts (a task, its webhooks) joins the caller's trace
            call.span_token = otel_context.attach(extract(metadata))
        if failure is None and policy is None:
            failure = _NoPolicyError("this method declares no access policy and is refused")
        return call, failure

    async def _refuse(self, call: CallState | None, exc: Exception, context: Context) -> None:
        request_id = call.request_id if call else "-"
        refusal = self._errors.refusal_for(exc, request_id=request_id)
        response_metadata: Sequence[tuple[str, str]] = ()
        if call is not None:
            call.code, call.reason = refusal.code, refusal.reason
            response_metadata = call.response_metadata
        # grpc keeps the AbortError, and with it this error (its __context__), beyond the
        # call: the traceback's frames would keep whatever the failed handler held (a
        # restore's 1.5 MiB line, per refused import). Logged above; not needed after.
        exc.__traceback__ = None
        await context.abort(
            refusal.code,
            refusal.message,
            ((REQUEST_ID_HEADER, request_id), *response_metadata, *refusal.trailing_metadata),
        )

    def _start_span(self, call: CallState) -> None:
        """A SERVER span, the child of the caller's (W3C `traceparent`, `tracestate` and
        `baggage`, read by the configured propagators, OTEL_PROPAGATORS)."""
        assert self._tracer is not None
        parent = extract(call.metadata)
        method = call.method.lstrip("/")
        span = self._tracer.start_span(
            method,
            context=parent,
            kind=trace.SpanKind.SERVER,
            attributes={
                "rpc.system.name": "grpc",
                "rpc.method": method,
                **peer_attributes(call.peer_address),
            },
        )
        call.span = span
        call.span_token = otel_context.attach(trace.set_span_in_context(span, parent))

    @staticmethod
    def _end_span(call: CallState) -> None:
        span = call.span
        span.set_attribute("rpc.status_code", call.code.name)
        if call.principal is not None:
            span.set_attribute(
                "meshgate.organization_id", call.principal.organization.organization_id
            )
            span.set_attribute("meshgate.key_id", call.principal.key.key_id)
        if call.namespace is not None:
            span.set_attribute("meshgate.namespace_id", call.namespace.namespace_id)
        if call.code in SERVER_ERRORS:
            span.set_attribute("error.type", call.code.name)
            span.set_status(trace.Status(trace.StatusCode.ERROR, call.code.name))
        span.end()
        otel_context.detach(call.span_token)

    def _finish(
        self,
        call: CallState | None,
        observers: tuple[Observer, ...],
        started: float,
        context: Context,
    ) -> None:
        if call is None:
            return
        if call.code is grpc.StatusCode.OK:
            code = context.code()
            if isinstance(code, grpc.StatusCode):
                call.code = code
        duration = time.perf_counter() - started
        for observer in observers:
            try:
                observer.finish(call, duration)
            except Exception:  # an observer must never change the call's outcome
                self._logger.exception("observer %s failed", type(observer).__name__)
        if call.span is not None:
            self._end_span(call)
        elif call.span_token is not None:
            otel_context.detach(call.span_token)
        call.close()

    def _wrap(
        self, method: str, policy: Policy | None, handler: grpc.RpcMethodHandler[Any, Any]
    ) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler grpc runs instead: `_serve` bound to the method's route, registered
        without a request deserializer, so grpc hands it the raw request bytes."""
        if handler.unary_unary is not None or handler.stream_unary is not None:
            inner: Any = handler.unary_unary or handler.stream_unary
            factory = (
                grpc.unary_unary_rpc_method_handler
                if handler.unary_unary is not None
                else grpc.stream_unary_rpc_method_handler
            )
        else:
            inner = _written(handler.unary_stream or handler.stream_stream)
            factory = (
                grpc.unary_stream_rpc_method_handler
                if handler.unary_stream is not None
                else grpc.stream_stream_rpc_method_handler
            )
        planned = policy or _UNDECLARED
        route = _Route(
            method=method,
            policy=policy,
            steps=plan_for(self._steps, planned),
            observers=plan_for(self._observers, planned, test="observes"),
            pages=self._pages if planned.paged else None,
            dry_run=self._dry_run_policies.get(method),
            respond=inner,
            keep_request=handler.unary_unary is not None,
            decoder=handler.request_deserializer,
            request_streaming=bool(handler.request_streaming),
        )
        serve = self._serve

        # a plain coroutine function, not functools.partial(self._serve, route): grpc asks
        # inspect whether the handler is a coroutine function on every call, and for a
        # partial of a bound method that costs it several µs more (docs/performance.md)
        async def handle(request: Any, context: Context) -> Any:
            return await serve(route, request, context)

        return factory(
            handle,
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True, slots=True)
class _Route:
    """What one method's calls share: its name, its policy, its plan (the steps and
    observers that apply to it, and the page-token binding of a List method), and what
    answers them."""

    method: str
    policy: Policy | None
    steps: tuple[Step, ...]
    observers: tuple[Observer, ...]
    pages: PageTokenBinding | None
    # the method's policy in dry run, if it has one (the method policy file)
    dry_run: Policy | None
    respond: Callable[[Any, Context], Awaitable[Any]]
    # the call state keeps the request for the observers (unary calls; streams: None)
    keep_request: bool
    # the request deserializer grpc would have run (None: the handler takes bytes)
    decoder: Decoder | None
    # requests arrive as a stream: decoded one by one as the servicer reads them
    request_streaming: bool


def _written(inner: Any) -> Callable[[Any, Context], Awaitable[None]]:
    """A streaming handler in the reader/writer form: the messages of one that yields them
    are written to the call (`context.write`); one that writes them itself is awaited."""

    async def respond(request: Any, context: Context) -> None:
        result = inner(request, context)
        if inspect.isasyncgen(result):
            async for item in result:
                await context.write(item)
        elif inspect.isawaitable(result):
            await result

    return respond


# stands in for a missing policy while the call is refused (it never reaches a step)
_UNDECLARED = Policy(access=Access.API_KEY)


class _NoPolicyError(PermissionDeniedError):
    """Mapped to PERMISSION_DENIED: the server fails closed on undeclared methods."""

    default_reason = Reason.METHOD_NOT_DECLARED
