"""Server reflection that also resolves method symbols (`grpcurl describe pkg.Service.Method`).

Python's descriptor pool does not find files by a method's full name, so the
stock servicer answers NOT_FOUND for them; we fall back to the service.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc
from grpc_reflection.v1alpha._async import ReflectionServicer

__all__ = ["enable_reflection"]


class _MethodAwareReflection(ReflectionServicer):  # type: ignore[misc]
    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        try:
            self._pool.FindFileContainingSymbol(fully_qualified_name)
        except KeyError:
            service, _, method = fully_qualified_name.rpartition(".")
            try:
                if method and self._pool.FindServiceByName(service).FindMethodByName(method):
                    fully_qualified_name = service
            except KeyError:
                pass
        return super()._file_containing_symbol(request, fully_qualified_name)


def enable_reflection(service_names: tuple[str, ...], server: grpc.aio.Server) -> None:
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        _MethodAwareReflection(names), server
    )
