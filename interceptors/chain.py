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
`context.abort(...)` through the errors step. Which steps apply to a method is
decided by the method's declared policy, read from the protos; a method with
no policy is refused (fail closed).

The request message is decoded here, once every step has admitted the call
(interceptors/decoding.py): grpc hands the chain the raw bytes, so a caller the
steps refuse never makes the server parse a body. The headers are read once,
before any step (interceptors/request_metadata.py). A List method's page token is
opened after decoding and the next one sealed after the servicer answered
(interceptors/page_tokens.py), so the servicers and stores see only their cursors.
"""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
from grpc.aio import AbortError
from opentelemetry import context as otel_context
from opentelemetry import trace

from interceptors.context import CallState, PeerContext, current_call
from interceptors.decoding import Decoder, MalformedRequests
from interceptors.errors import ErrorMapper
from interceptors.page_tokens import PageTokenBinding
from interceptors.policy import Access, Policy
from interceptors.request_metadata import (
    MAX_METADATA_BYTES,
    UndecodableHeaderError,
    read_metadata,
)
from interceptors.telemetry import REQUEST_ID_HEADER, Telemetry
from storage.core.errors import MeshgateError, PermissionDeniedError

__all__ = ["MAX_METADATA_BYTES", "Observer", "SecurityChain", "Step"]

Context = grpc.aio.ServicerContext[Any, Any]


class Step(Protocol):
    """Admits or refuses a call before the servicer runs (raise a typed error to refuse).

    Returns None when decided, or an awaitable that finishes the check (I/O needed).
    """

    def check(self, call: CallState, context: PeerContext) -> Awaitable[None] | None: ...


class Observer(Protocol):
    """Sees every finished call, admitted or not: access log, usage analytics, audit."""

    def finish(self, call: CallState, duration_s: float) -> None: ...


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
    ) -> None:
        self._policies = policies
        self._errors = errors
        self._steps = tuple(steps)
        self._observers = tuple(observers)
        self._tracer = tracer
        self._logger = logger
        self._malformed = malformed or MalformedRequests(metrics=None, logger=logger)
        self._pages = page_tokens
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

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
            for step in self._steps:
                pending = step.check(call, context)
                if pending is not None:
                    await pending
            call.admitted = True
            if route.decoder is not None:
                if route.request_streaming:
                    request = self._malformed.decode_stream(route.decoder, request, route.method)
                else:
                    request = self._malformed.decode(route.decoder, request, route.method)
            if route.keep_request:
                call.request = request
            binding = (
                self._pages.open(call, request)
                if self._pages is not None and call.policy.paged
                else None
            )
            headers = self._send_headers(call, context)
            if headers is not None:
                await headers
            response = await route.respond(request, context)
            if binding is not None:
                binding.seal(response)
            return response
        except AbortError:
            raise
        except Exception as exc:
            await self._refuse(call, exc, context)
        finally:
            self._finish(call, started, context)

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
        context.set_trailing_metadata(((REQUEST_ID_HEADER, call.request_id),))
        if failure is None and policy is None:
            failure = _NoPolicyError("this method declares no access policy and is refused")
        return call, failure

    @staticmethod
    def _send_headers(call: CallState, context: Context) -> Awaitable[None] | None:
        """Initial metadata, once: the request id and whatever the steps added (rate limits).
        None when it went out already; the caller awaits what it gets."""
        if call.headers_sent:
            return None
        call.headers_sent = True
        return context.send_initial_metadata(
            ((REQUEST_ID_HEADER, call.request_id), *call.response_metadata)
        )

    async def _refuse(self, call: CallState | None, exc: Exception, context: Context) -> None:
        request_id = call.request_id if call else "-"
        refusal = self._errors.refusal_for(exc, request_id=request_id)
        if call is not None:
            call.code = refusal.code
            headers = self._send_headers(call, context)
            if headers is not None:
                await headers
        await context.abort(
            refusal.code,
            refusal.message,
            ((REQUEST_ID_HEADER, request_id), *refusal.trailing_metadata),
        )

    def _start_span(self, call: CallState) -> None:
        assert self._tracer is not None
        service, _, name = call.method.lstrip("/").partition("/")
        span = self._tracer.start_span(
            f"{service}/{name}",
            kind=trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
        )
        call.span = span
        call.span_token = otel_context.attach(trace.set_span_in_context(span))

    @staticmethod
    def _end_span(call: CallState) -> None:
        span = call.span
        span.set_attribute("rpc.grpc.status_code", call.code.value[0])
        if call.principal is not None:
            span.set_attribute(
                "meshgate.organization_id", call.principal.organization.organization_id
            )
            span.set_attribute("meshgate.key_id", call.principal.key.key_id)
        if call.namespace is not None:
            span.set_attribute("meshgate.namespace_id", call.namespace.namespace_id)
        if call.code in _SERVER_ERRORS:
            span.set_status(trace.Status(trace.StatusCode.ERROR, call.code.name))
        span.end()
        otel_context.detach(call.span_token)

    def _finish(self, call: CallState | None, started: float, context: Context) -> None:
        if call is None:
            return
        if call.code is grpc.StatusCode.OK:
            code = context.code()
            if isinstance(code, grpc.StatusCode):
                call.code = code
        duration = time.perf_counter() - started
        for observer in self._observers:
            try:
                observer.finish(call, duration)
            except Exception:  # an observer must never change the call's outcome
                self._logger.exception("observer %s failed", type(observer).__name__)
        if call.span is not None:
            self._end_span(call)
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
        route = _Route(
            method=method,
            policy=policy,
            respond=inner,
            keep_request=handler.unary_unary is not None,
            decoder=handler.request_deserializer,
            request_streaming=bool(handler.request_streaming),
        )
        return factory(
            functools.partial(self._serve, route),
            request_deserializer=None,
            response_serializer=handler.response_serializer,
        )


@dataclass(frozen=True, slots=True)
class _Route:
    """What one method's calls share: its name, its policy, and what answers them."""

    method: str
    policy: Policy | None
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

# SERVER spans are errors only for these codes (OpenTelemetry rpc semantic conventions)
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class _NoPolicyError(PermissionDeniedError):
    """Mapped to PERMISSION_DENIED: the server fails closed on undeclared methods."""
