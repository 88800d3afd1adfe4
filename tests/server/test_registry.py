"""The service registry is the single source: what it lists is served, listed by
reflection, health-checked and covered by the policy table, and nothing else is."""

from __future__ import annotations

import importlib
import pkgutil

import grpc
import meshgate.v1
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from server.app import RunningServer
from server.policies import PUBLIC_METHODS, build_policy_table, undeclared_methods
from server.registry import SERVICES, descriptors
from server.sidecars import SIDECAR_SERVICES
from tests.support.clients import health_check, raw_unary, reflection_info

NAMES = {s.name for s in SERVICES}


def test_every_service_of_the_protos_has_one_row() -> None:
    declared = {
        service.full_name
        for module in pkgutil.iter_modules(meshgate.v1.__path__)
        if module.name.endswith("_pb2")
        for service in importlib.import_module(
            f"meshgate.v1.{module.name}"
        ).DESCRIPTOR.services_by_name.values()
    }
    assert len(NAMES) == len(SERVICES)
    assert declared == NAMES


def test_every_method_of_the_registry_has_a_policy() -> None:
    table = build_policy_table(descriptors())
    assert undeclared_methods(descriptors(), table) == []
    methods = {f"/{d.full_name}/{m.name}" for d in descriptors() for m in d.methods}
    assert set(table) == methods | set(PUBLIC_METHODS)


async def test_every_method_of_the_registry_is_served(channel: grpc.aio.Channel) -> None:
    """A method without a handler is UNIMPLEMENTED whatever its policy; a served one answers
    or refuses (a call without a key mostly is)."""
    for service in SERVICES:
        for method in service.descriptor.methods:
            call = raw_unary(channel, f"/{service.name}/{method.name}")
            try:
                await call(b"", timeout=10)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() != grpc.StatusCode.UNIMPLEMENTED, method.full_name


async def test_reflection_lists_the_registry(channel: grpc.aio.Channel) -> None:
    responses = reflection_info(channel)(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")])
    )
    listed = {s.name async for r in responses for s in r.list_services_response.service}
    assert listed == NAMES | set(SIDECAR_SERVICES) | {
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_every_service_of_the_registry_has_a_health_status(
    server: RunningServer, channel: grpc.aio.Channel
) -> None:
    check = health_check(channel)
    for name in ("", *NAMES):
        response = await check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING, name
    assert set(server.health.statuses()) == NAMES | {"(server)"}
