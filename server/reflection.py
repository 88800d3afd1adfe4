"""Server reflection, `grpc.reflection.v1` and `v1alpha`, answered by one servicer.

grpcio-reflection 1.85 ships only v1alpha. The v1 protocol is the same
protocol under another package name: grpc's `reflection/v1/reflection.proto`
has the v1alpha messages field for field, number for number. So both services
are served by grpcio-reflection's public aio servicer with the v1alpha message
classes (the bytes on the wire are the same), and the v1 file descriptor,
derived from v1alpha's by renaming its package, is added to the pool so that
`describe grpc.reflection.v1.ServerReflection` works too.

Python's descriptor pool does not find a file by a method's full name
(`grpcurl describe pkg.Service.Method`), so the stock servicer answers
NOT_FOUND for one; we ask it for the method's service instead and hand the
caller's request back unchanged in the answer.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, cast

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection, reflection_pb2

__all__ = ["V1ALPHA_SERVICE", "V1_SERVICE", "enable_reflection"]

V1ALPHA_SERVICE = reflection.SERVICE_NAME
V1_SERVICE = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"

Request = reflection_pb2.ServerReflectionRequest
Response = reflection_pb2.ServerReflectionResponse


def _add_v1_descriptor(pool: DescriptorPool) -> None:
    """`grpc.reflection.v1` as a file of `pool`: v1alpha's descriptor under the v1 names."""
    try:
        pool.FindFileByName(_V1_FILE)
        return  # another server of this process added it
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    old, new = f".{proto.package}.", ".grpc.reflection.v1."
    proto.name, proto.package = _V1_FILE, "grpc.reflection.v1"
    proto.ClearField("options")  # v1alpha's language options name v1alpha packages
    for message in proto.message_type:
        for message_field in message.field:
            if message_field.HasField("type_name"):
                message_field.type_name = message_field.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool.Add(proto)


class _Reflection:
    """ServerReflectionInfo for both versions, over grpcio-reflection's public servicer."""

    def __init__(self, service_names: tuple[str, ...], pool: DescriptorPool) -> None:
        self._pool = pool
        self._servicer = reflection.aio.ReflectionServicer(service_names, pool=pool)

    async def ServerReflectionInfo(
        self, requests: AsyncIterable[Request], context: Any
    ) -> AsyncIterator[Response]:
        asked: deque[Request] = deque()  # one answer per request, in order

        async def resolved() -> AsyncIterator[Request]:
            async for request in requests:
                asked.append(request)
                yield self._method_to_service(request)

        # an async generator; grpcio-reflection's stubs declare a coroutine
        answers = cast(
            AsyncIterator[Response], self._servicer.ServerReflectionInfo(resolved(), context)
        )
        async for response in answers:
            response.original_request.CopyFrom(asked.popleft())
            yield response

    def _method_to_service(self, request: Request) -> Request:
        if not request.HasField("file_containing_symbol"):
            return request
        symbol = request.file_containing_symbol
        try:
            self._pool.FindFileContainingSymbol(symbol)
            return request
        except KeyError:
            pass
        service, _, method = symbol.rpartition(".")
        try:
            if method not in self._pool.FindServiceByName(service).methods_by_name:
                return request
        except KeyError:
            return request
        as_service = Request()
        as_service.CopyFrom(request)
        as_service.file_containing_symbol = service
        return as_service


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    """Reflection v1 and v1alpha on `server`, listing `service_names` and both versions."""
    pool = descriptor_pool.Default()
    _add_v1_descriptor(pool)
    servicer = _Reflection((*service_names, V1_SERVICE, V1ALPHA_SERVICE), pool)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=Request.FromString,
        response_serializer=Response.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        tuple(
            grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
            for name in (V1_SERVICE, V1ALPHA_SERVICE)
        )
    )
