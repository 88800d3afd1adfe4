"""Server reflection that also resolves method symbols (`grpcurl describe pkg.Service.Method`).

Python's descriptor pool does not find files by a method's full name, so the
stock servicer answers NOT_FOUND for them; we fall back to the service.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

__all__ = ["enable_reflection"]


class _MethodAwareReflection(ReflectionServicer):
    # `_pool` and `_file_containing_symbol` are grpc_reflection internals, so its stubs do
    # not declare them; tests/test_grpcurl.py checks that this hook still works.
    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        pool: DescriptorPool = self._pool  # type: ignore[attr-defined]
        try:
            pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service, _, method = fully_qualified_name.rpartition(".")
            try:
                if method and pool.FindServiceByName(service).FindMethodByName(method):
                    fully_qualified_name = service
            except KeyError:
                pass
        return super()._file_containing_symbol(request, fully_qualified_name)  # type: ignore[misc]


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(  # type: ignore[no-untyped-call]
        _MethodAwareReflection(names), server
    )
