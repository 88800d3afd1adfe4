"""NamespaceService: create and list namespaces; get, delete, export and import the one in
`x-namespace`."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from meshgate.v1 import namespace_service_pb2 as pb
from meshgate.v1 import namespace_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import environment_from_proto, environment_to_proto, timestamp
from storage.core.errors import PermissionDeniedError, Reason
from storage.core.pages import page_size
from storage.data.backup import BackupCounts, ExportProgress, NamespaceBackup
from storage.data.cascade import NamespacePurger
from storage.tenancy.invalidation import InvalidationBus
from storage.tenancy.namespaces import Namespace, NamespaceStore

__all__ = ["NamespaceServicer", "namespace_to_proto"]


def namespace_to_proto(namespace: Namespace) -> pb.Namespace:
    return pb.Namespace(
        namespace_id=namespace.namespace_id,
        name=namespace.name,
        environment=environment_to_proto(namespace.environment),
        create_time=timestamp(namespace.created_at),
    )


class NamespaceServicer(pb_grpc.NamespaceServiceServicer):
    def __init__(
        self,
        *,
        namespaces: NamespaceStore,
        invalidation: InvalidationBus,
        purger: NamespacePurger,
        backups: NamespaceBackup,
    ) -> None:
        self._namespaces = namespaces
        self._invalidation = invalidation
        self._purger = purger
        self._backups = backups

    async def CreateNamespace(
        self, request: pb.CreateNamespaceRequest, context: Any
    ) -> pb.CreateNamespaceResponse:
        principal = current_call.get().require_principal()
        environment = environment_from_proto(request.environment)
        if environment != principal.key.environment:
            raise PermissionDeniedError(
                "a key can only create namespaces of its own environment",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        if principal.key.namespace_ids:
            raise PermissionDeniedError(
                "a namespace-restricted key cannot create namespaces",
                reason=Reason.KEY_SCOPE_INSUFFICIENT,
            )
        namespace = await self._namespaces.create(
            internal_id=principal.organization.internal_id,
            name=request.name,
            environment=environment,
        )
        current_call.get().resource = namespace.namespace_id
        return pb.CreateNamespaceResponse(namespace=namespace_to_proto(namespace))

    async def GetNamespace(
        self, request: pb.GetNamespaceRequest, context: Any
    ) -> pb.GetNamespaceResponse:
        namespace = current_call.get().require_namespace()
        return pb.GetNamespaceResponse(namespace=namespace_to_proto(namespace))

    async def ListNamespaces(
        self, request: pb.ListNamespacesRequest, context: Any
    ) -> pb.ListNamespacesResponse:
        principal = current_call.get().require_principal()
        items, token = await self._namespaces.list_page(
            internal_id=principal.organization.internal_id,
            environment=principal.key.environment,
            only_ids=principal.key.namespace_ids or None,
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return pb.ListNamespacesResponse(
            namespaces=[namespace_to_proto(n) for n in items], next_page_token=token
        )

    async def DeleteNamespace(
        self, request: pb.DeleteNamespaceRequest, context: Any
    ) -> pb.DeleteNamespaceResponse:
        scope = current_call.get().require_scope()
        await self._namespaces.mark_deleting(
            internal_id=scope.internal_id, namespace_id=scope.namespace_id
        )
        # unusable everywhere from here on; then the data goes (see storage/data/cascade.py)
        await self._invalidation.namespace_deleted(scope.namespace_id)
        await self._purger.finish(scope)
        return pb.DeleteNamespaceResponse(namespace_id=scope.namespace_id)

    # The writer form (the chain awaits it): each write is timed, so a client that stops
    # reading is cut off after the idle time instead of holding the export's cursors. The
    # headers go first, alone (they are not flow-controlled): a write that never completes
    # then holds only its message, and the status can still be queued behind it.
    async def ExportNamespace(  # type: ignore[override]
        self, request: pb.ExportNamespaceRequest, context: Any
    ) -> None:
        call = current_call.get()
        await context.send_initial_metadata(())

        async def send(item: bytes | ExportProgress) -> None:
            if isinstance(item, ExportProgress):
                progress = pb.ExportProgress(done=_counts(item.done), total=_counts(item.total))
                await context.write(pb.ExportNamespaceResponse(progress=progress))
            else:
                await context.write(pb.ExportNamespaceResponse(data=item))

        await self._backups.export_to(call.require_scope(), call.require_namespace(), send)

    async def ImportNamespace(
        self, request_iterator: AsyncIterable[pb.ImportNamespaceRequest], context: Any
    ) -> pb.ImportNamespaceResponse:
        scope = current_call.get().require_scope()

        async def chunks() -> AsyncIterator[bytes]:
            async for request in request_iterator:
                yield request.data

        result = await self._backups.restore(scope, chunks())
        return pb.ImportNamespaceResponse(
            namespace_id=scope.namespace_id,
            restored=_counts(result.restored),
            webhooks=[
                pb.RestoredWebhook(webhook_id=w.webhook_id, url=w.url, secret=secret)
                for w, secret in result.webhooks
            ],
        )


def _counts(counts: BackupCounts) -> pb.BackupCounts:
    return pb.BackupCounts(
        documents=counts.documents, points=counts.points, webhooks=counts.webhooks
    )
