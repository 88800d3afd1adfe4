"""The server as the services see it: methods routed by generic handlers only.

grpcio 1.85's asyncio server accepts calls with one pending request per *registered*
method and an `asyncio.wait(..., FIRST_COMPLETED)` over all of them for every call it
accepts (grpc/grpc#41796 brought registered methods to the asyncio stack). The
generated `add_<Service>Servicer_to_server` registers every method of its service, so a
server of some fifty methods waited over fifty futures per call, where a server routing
through generic handlers waits over one: on meshgate that was about 430 Python function
calls per call, a sixth of its CPU per call at a fixed rate and about 100 µs of a lone
call's latency (docs/performance.md). grpc/grpc#43461 ("[python][aio] Fix server RPC accept
loop performance regression", open) is the upstream fix; until a grpcio release carries
it, the methods are not registered.

What registered methods give is kept: the methods a service registers go into one
table, consulted first, so a method is found by one dictionary lookup as a registered
one is (not by a scan of the generic handlers), and a service whose generated code only
registered its methods would still be routed. The other gain, grpc's OpenTelemetry
plugin naming registered methods in its metrics, does not apply: meshgate does not
install that plugin, and its own metrics and spans name the method
(interceptors/telemetry.py). tests/server/test_registry.py pins the choice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import grpc

__all__ = ["GenericHandlersOnly"]


class GenericHandlersOnly(grpc.aio.Server):
    """A grpc.aio server whose methods are routed by generic handlers only: what a service
    registers goes into a table consulted before the other generic handlers; everything
    else is the wrapped server's."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server
        self._table = _MethodTable()
        server.add_generic_rpc_handlers((self._table,))

    def add_generic_rpc_handlers(
        self, generic_rpc_handlers: Iterable[grpc.GenericRpcHandler]
    ) -> None:
        self._server.add_generic_rpc_handlers(tuple(generic_rpc_handlers))

    def add_registered_method_handlers(
        self, service_name: str, method_handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        """Into the table, not registered with grpc (grpc/grpc#43461)."""
        for method, handler in method_handlers.items():
            self._table.handlers[f"/{service_name}/{method}"] = handler

    def add_insecure_port(self, address: str) -> int:
        return self._server.add_insecure_port(address)

    def add_secure_port(self, address: str, server_credentials: grpc.ServerCredentials) -> int:
        return self._server.add_secure_port(address, server_credentials)

    async def start(self) -> None:
        await self._server.start()

    async def stop(self, grace: float | None) -> None:
        await self._server.stop(grace)

    # grpc.aio.Server's signature, timeout included
    async def wait_for_termination(self, timeout: float | None = None) -> bool:  # noqa: ASYNC109
        return await self._server.wait_for_termination(timeout)


class _MethodTable(grpc.GenericRpcHandler):
    """The methods services asked to register, by full name (`/package.Service/Method`)."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        return self.handlers.get(handler_call_details.method)
