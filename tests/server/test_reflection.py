"""Server reflection as clients that speak only v1, or only v1alpha, use it.

The v1 client here is written from grpc's `reflection/v1/reflection.proto`: it
calls `/grpc.reflection.v1.ServerReflection/ServerReflectionInfo` and nothing
else. Its messages are encoded by hand-built v1 descriptors (a pool of the
test's own), not by the server's, so a server that only knew v1alpha's
service name would fail it.
"""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

V1_METHOD = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
V1ALPHA_METHOD = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"

_F = descriptor_pb2.FieldDescriptorProto


def _v1_messages(package: str) -> tuple[type[Message], type[Message]]:
    """ServerReflectionRequest/Response of `package` (fields as in grpc's reflection.proto;
    only those this test reads or writes), in a pool of the test's own."""
    file = descriptor_pb2.FileDescriptorProto(
        name=f"test/{package}/reflection.proto", package=package, syntax="proto3"
    )

    def message(name: str, *fields: tuple[str, int, int, str, int | None]) -> None:
        m = file.message_type.add(name=name)
        for field_name, number, kind, type_name, oneof in fields:
            f = m.field.add(name=field_name, number=number, type=kind, label=_F.LABEL_OPTIONAL)
            if type_name:
                f.type_name = f".{package}.{type_name}"
            if oneof is not None:
                f.oneof_index = oneof
        if name in ("ServerReflectionRequest", "ServerReflectionResponse"):
            m.oneof_decl.add(name="message")

    msg, text, num = _F.TYPE_MESSAGE, _F.TYPE_STRING, _F.TYPE_INT32
    message(
        "ServerReflectionRequest",
        ("host", 1, text, "", None),
        ("file_by_filename", 3, text, "", 0),
        ("file_containing_symbol", 4, text, "", 0),
        ("list_services", 7, text, "", 0),
    )
    message("ServiceResponse", ("name", 1, text, "", None))
    message("ListServiceResponse", ("service", 1, msg, "ServiceResponse", None))
    message("FileDescriptorResponse", ("file_descriptor_proto", 1, _F.TYPE_BYTES, "", None))
    message("ErrorResponse", ("error_code", 1, num, "", None), ("error_message", 2, text, "", None))
    message(
        "ServerReflectionResponse",
        ("valid_host", 1, text, "", None),
        ("original_request", 2, msg, "ServerReflectionRequest", None),
        ("file_descriptor_response", 4, msg, "FileDescriptorResponse", 0),
        ("list_services_response", 6, msg, "ListServiceResponse", 0),
        ("error_response", 7, msg, "ErrorResponse", 0),
    )
    # repeated fields
    for m in file.message_type:
        for f in m.field:
            if (m.name, f.name) in {
                ("ListServiceResponse", "service"),
                ("FileDescriptorResponse", "file_descriptor_proto"),
            }:
                f.label = _F.LABEL_REPEATED
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{package}.ServerReflectionRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName(f"{package}.ServerReflectionResponse")
        ),
    )


V1Request, V1Response = _v1_messages("grpc.reflection.v1")


async def ask(channel: grpc.aio.Channel, method: str, **request: str) -> Message:
    call: grpc.aio.StreamStreamCall[Message, Message] = channel.stream_stream(
        method,
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=V1Response.FromString,
    )()
    await call.write(V1Request(**request))
    await call.done_writing()
    answers = [answer async for answer in call]
    assert len(answers) == 1
    return answers[0]


@pytest.mark.parametrize("method", [V1_METHOD, V1ALPHA_METHOD])
async def test_list_services_through_each_version(channel: grpc.aio.Channel, method: str) -> None:
    answer = await ask(channel, method, list_services="*")
    names = {s.name for s in answer.list_services_response.service}  # type: ignore[attr-defined]
    assert {
        "meshgate.v1.KeyService",
        "meshgate.v1.IdentityService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= names
    assert answer.original_request.list_services == "*"  # type: ignore[attr-defined]


async def test_v1_describes_a_method_and_itself(channel: grpc.aio.Channel) -> None:
    answer = await ask(
        channel, V1_METHOD, file_containing_symbol="meshgate.v1.KeyService.RotateKey"
    )
    files = answer.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    described = [descriptor_pb2.FileDescriptorProto.FromString(raw) for raw in files]
    assert any(
        s.name == "KeyService" and "RotateKey" in {m.name for m in s.method}
        for f in described
        for s in f.service
    )
    # the caller's own question comes back as it was asked (the method, not its service)
    assert answer.original_request.file_containing_symbol == "meshgate.v1.KeyService.RotateKey"  # type: ignore[attr-defined]

    answer = await ask(
        channel, V1_METHOD, file_containing_symbol="grpc.reflection.v1.ServerReflection"
    )
    (raw,) = answer.file_descriptor_response.file_descriptor_proto  # type: ignore[attr-defined]
    v1 = descriptor_pb2.FileDescriptorProto.FromString(raw)
    assert v1.package == "grpc.reflection.v1"
    (method,) = v1.service[0].method
    assert method.input_type == ".grpc.reflection.v1.ServerReflectionRequest"


async def test_unknown_symbol_is_not_found(channel: grpc.aio.Channel) -> None:
    answer = await ask(channel, V1_METHOD, file_containing_symbol="meshgate.v1.NoSuchService")
    assert answer.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]  # type: ignore[attr-defined]
