"""WebhookService: the webhooks of the namespace in `x-namespace`, and their deliveries.

Secrets appear in exactly two responses (CreateWebhook, RotateWebhookSecret);
`WebhookRecord` has no secret, so no other response can carry one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from meshgate.v1 import webhook_service_pb2 as pb
from meshgate.v1 import webhook_service_pb2_grpc as pb_grpc

from calls.state import current_call
from services.convert import duration, names_from_proto, timestamp
from storage.backends.work_queue import WorkQueue
from storage.core.errors import FailedPreconditionError, InvalidArgumentError
from storage.core.pages import page_size
from storage.webhooks.deliveries import DeliveryRecord, DeliveryStore
from storage.webhooks.sender import WebhookSender
from storage.webhooks.store import WebhookRecord, WebhookStore, check_description, check_event_types

__all__ = ["WebhookServicer", "delivery_to_proto", "webhook_to_proto"]

_STATUSES = {
    "pending": pb.DELIVERY_STATUS_PENDING,
    "succeeded": pb.DELIVERY_STATUS_SUCCEEDED,
    "failed": pb.DELIVERY_STATUS_FAILED,
    "exhausted": pb.DELIVERY_STATUS_EXHAUSTED,
}
_STATUSES_BACK = {v: k for k, v in _STATUSES.items()}
_MASK_PATHS = ("url", "event_types", "enabled", "description")


def webhook_to_proto(record: WebhookRecord) -> pb.Webhook:
    return pb.Webhook(
        webhook_id=record.webhook_id,
        url=record.url,
        event_types=list(record.event_types),
        enabled=record.enabled,
        description=record.description,
        disabled_reason=record.disabled_reason,
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
        secret_rotate_time=timestamp(record.secret_rotated_at),
    )


def delivery_to_proto(record: DeliveryRecord) -> pb.Delivery:
    return pb.Delivery(
        delivery_id=record.delivery_id,
        webhook_id=record.webhook_id,
        event_id=record.event_id,
        event_type=record.event_type,
        status=_STATUSES[record.status],
        attempt_count=record.attempt_count,
        next_attempt_time=timestamp(record.next_attempt_at),
        last_attempt_time=timestamp(record.last_attempt_at),
        last_response_code=record.last_response_code,
        last_error=record.last_error,
        attempts=[
            pb.DeliveryAttempt(
                attempt_time=timestamp(a.at),
                response_code=a.response_code,
                error=a.error,
                duration_ms=a.duration_ms,
            )
            for a in record.attempts
        ],
        create_time=timestamp(record.created_at),
        update_time=timestamp(record.updated_at),
    )


def _statuses(values: list[int]) -> frozenset[str]:
    return names_from_proto(
        values,
        _STATUSES_BACK,
        field="statuses",
        refusal="statuses may only hold DELIVERY_STATUS_PENDING, DELIVERY_STATUS_SUCCEEDED,"
        " DELIVERY_STATUS_FAILED or DELIVERY_STATUS_EXHAUSTED",
    )


def _noop() -> None:
    return None


class WebhookServicer(pb_grpc.WebhookServiceServicer):
    def __init__(
        self,
        *,
        webhooks: WebhookStore,
        deliveries: DeliveryStore,
        queue: WorkQueue,
        sender: WebhookSender,
        on_retry: Callable[[], None] = _noop,
    ) -> None:
        self._webhooks = webhooks
        self._deliveries = deliveries
        self._queue = queue
        self._sender = sender
        self._on_retry = on_retry  # wakes this process's dispatcher

    async def CreateWebhook(
        self, request: pb.CreateWebhookRequest, context: Any
    ) -> pb.CreateWebhookResponse:
        scope = current_call.get().require_scope()
        event_types = check_event_types(list(request.webhook.event_types))
        description = check_description(request.webhook.description)
        await self._sender.vet(request.webhook.url)
        record, secret = await self._webhooks.create(
            scope, url=request.webhook.url, event_types=event_types, description=description
        )
        return pb.CreateWebhookResponse(webhook=webhook_to_proto(record), secret=secret)

    async def GetWebhook(
        self, request: pb.GetWebhookRequest, context: Any
    ) -> pb.GetWebhookResponse:
        scope = current_call.get().require_scope()
        record = await self._webhooks.get(scope, request.webhook_id)
        return pb.GetWebhookResponse(webhook=webhook_to_proto(record))

    async def ListWebhooks(
        self, request: pb.ListWebhooksRequest, context: Any
    ) -> pb.ListWebhooksResponse:
        scope = current_call.get().require_scope()
        records, token = await self._webhooks.list_page(
            scope, page_size=page_size(request.page_size), page_token=request.page_token
        )
        return pb.ListWebhooksResponse(
            webhooks=[webhook_to_proto(r) for r in records], next_page_token=token
        )

    async def UpdateWebhook(
        self, request: pb.UpdateWebhookRequest, context: Any
    ) -> pb.UpdateWebhookResponse:
        scope = current_call.get().require_scope()
        paths = list(request.update_mask.paths)
        if not paths:
            raise InvalidArgumentError(
                "update_mask must name at least one path", field="update_mask"
            )
        unknown = [p for p in paths if p not in _MASK_PATHS]
        if unknown:
            raise InvalidArgumentError(
                f"update_mask path {unknown[0][:80]!r} is not one of {', '.join(_MASK_PATHS)}",
                field="update_mask",
            )
        webhook = request.webhook
        await self._webhooks.get(scope, webhook.webhook_id)  # NOT_FOUND before any DNS lookup
        changes: dict[str, Any] = {}
        if "event_types" in paths:
            changes["event_types"] = check_event_types(list(webhook.event_types))
        if "description" in paths:
            changes["description"] = check_description(webhook.description)
        if "enabled" in paths:
            changes["enabled"] = webhook.enabled
        if "url" in paths:
            await self._sender.vet(webhook.url)
            changes["url"] = webhook.url
        record = await self._webhooks.update(scope, webhook.webhook_id, changes)
        return pb.UpdateWebhookResponse(webhook=webhook_to_proto(record))

    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: Any
    ) -> pb.RotateWebhookSecretResponse:
        scope = current_call.get().require_scope()
        grace = duration(request.grace_period)
        record, secret, cutoff = await self._webhooks.rotate(scope, request.webhook_id, grace=grace)
        return pb.RotateWebhookSecretResponse(
            webhook=webhook_to_proto(record),
            secret=secret,
            previous_secret_expire_time=timestamp(cutoff),
        )

    async def DeleteWebhook(
        self, request: pb.DeleteWebhookRequest, context: Any
    ) -> pb.DeleteWebhookResponse:
        scope = current_call.get().require_scope()
        # the webhook first: no new deliveries fan out to it; pending ones are dropped
        await self._webhooks.delete(scope, request.webhook_id)
        await self._deliveries.delete_for_webhook(scope, request.webhook_id)
        return pb.DeleteWebhookResponse()

    async def ListDeliveries(
        self, request: pb.ListDeliveriesRequest, context: Any
    ) -> pb.ListDeliveriesResponse:
        scope = current_call.get().require_scope()
        webhook = await self._webhooks.get(scope, request.webhook_id)
        records, token = await self._deliveries.list_page(
            scope,
            webhook_id=webhook.webhook_id,
            statuses=_statuses(list(request.statuses)),
            page_size=page_size(request.page_size),
            page_token=request.page_token,
        )
        return pb.ListDeliveriesResponse(
            deliveries=[delivery_to_proto(r) for r in records], next_page_token=token
        )

    async def RetryDelivery(
        self, request: pb.RetryDeliveryRequest, context: Any
    ) -> pb.RetryDeliveryResponse:
        scope = current_call.get().require_scope()
        delivery = await self._deliveries.get(scope, request.delivery_id)
        if delivery.status not in ("failed", "exhausted"):
            raise FailedPreconditionError(
                f"only failed or exhausted deliveries can be retried; this one is {delivery.status}"
            )
        webhook = await self._webhooks.get(scope, delivery.webhook_id)
        if not webhook.enabled:
            raise FailedPreconditionError(
                "the webhook is disabled; enable it (UpdateWebhook) before retrying"
            )
        # reserve the row, restart the delivery, then make the row due (crash-safe order)
        await self._queue.reserve("delivery", scope, delivery.delivery_id)
        record = await self._deliveries.restart(scope, delivery.delivery_id)
        await self._queue.release("delivery", delivery.delivery_id)
        self._on_retry()
        return pb.RetryDeliveryResponse(delivery=delivery_to_proto(record))
