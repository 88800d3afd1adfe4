"""Delivering webhook events: one attempt per claim, then success, a retry, or an end.

- 2xx: SUCCEEDED.
- 410 Gone: the delivery FAILED and the webhook is disabled (the receiver said
  it is gone for good); its other pending deliveries fail when they come up.
- anything else (no response, timeout, refused target, 3xx, 4xx, 5xx): the
  next attempt follows the retry schedule, with jitter; on 429 and 503 not
  before the receiver's `Retry-After`. After the last step: EXHAUSTED.

A crash between the request and recording its result leaves the row leased;
it becomes due again when the lease runs out and the event is sent again with
the same `webhook-id` (at least once; receivers deduplicate).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import timedelta

from server.workers.metrics import WorkMetrics
from storage.backends.work_queue import Claim, WorkQueue
from storage.core.clock import utc_now
from storage.webhooks.deliveries import AttemptRecord, DeliveryRecord, DeliveryStore
from storage.webhooks.outbox import EventOutbox
from storage.webhooks.sealing import SealedSecretError
from storage.webhooks.sender import SendResult, WebhookSender
from storage.webhooks.store import WebhookStore

__all__ = ["DeliveryWorker", "RetrySchedule"]

_RNG = random.SystemRandom()


@dataclass(frozen=True, slots=True)
class RetrySchedule:
    """Delays after each failed attempt (settings: MESHGATE_WEBHOOK_RETRY_SCHEDULE)."""

    delays_s: tuple[float, ...]
    jitter: float

    def delay_after(self, failed_attempts: int) -> float | None:
        """Seconds before the next attempt after `failed_attempts` failures; None: exhausted."""
        if failed_attempts < 1 or failed_attempts > len(self.delays_s):
            return None
        base = self.delays_s[failed_attempts - 1]
        return base * _RNG.uniform(1 - self.jitter, 1 + self.jitter)


class DeliveryWorker:
    def __init__(
        self,
        *,
        queue: WorkQueue,
        deliveries: DeliveryStore,
        webhooks: WebhookStore,
        outbox: EventOutbox,
        sender: WebhookSender,
        schedule: RetrySchedule,
        metrics: WorkMetrics,
        logger: logging.Logger,
    ) -> None:
        self._queue = queue
        self._deliveries = deliveries
        self._webhooks = webhooks
        self._outbox = outbox
        self._sender = sender
        self._schedule = schedule
        self._metrics = metrics
        self._log = logger

    async def handle(self, claim: Claim) -> None:
        scope = claim.scope
        delivery = await self._deliveries.find(scope, claim.ref)
        if delivery is None or delivery.status != "pending":
            await self._queue.done(claim)  # removed with its webhook, or finished already
            return
        try:
            found = await self._webhooks.for_delivery(scope, delivery.webhook_id)
        except SealedSecretError:
            # retrying cannot help until the operator restores the key
            self._log.error(
                "webhook %s: its signing secret does not open with MESHGATE_WEBHOOK_SECRET_KEY",
                delivery.webhook_id,
            )
            await self._stop(
                claim, delivery, error="the webhook's signing secret cannot be read by the server"
            )
            return
        webhook, secrets = found if found is not None else (None, [])
        event = await self._outbox.get(scope, delivery.event_id)
        if webhook is None or not webhook.enabled or event is None:
            reason = (
                "the webhook was deleted"
                if webhook is None
                else "the webhook is disabled"
                if not webhook.enabled
                else "the event is gone"
            )
            await self._stop(claim, delivery, error=reason)
            return
        attempted_at = utc_now()
        result = await self._sender.send(
            url=webhook.url, msg_id=event.event_id, body=event.body.encode(), secrets=secrets
        )
        self._metrics.delivery_attempts += 1
        attempt = AttemptRecord(
            at=attempted_at,
            response_code=result.status_code,
            error=result.error,
            duration_ms=result.duration_ms,
        )
        if result.ok:
            await self._end(claim, delivery, attempt=attempt, status="succeeded")
            return
        self._metrics.delivery_attempt_failures += 1
        if result.status_code == 410:  # gone for good: so is the webhook
            await self._end(
                claim, delivery, attempt=attempt, status="failed", disable=webhook.webhook_id
            )
            return
        delay = self._next_delay(result, failed_in_round=delivery.round_attempts + 1)
        if delay is None:
            await self._end(claim, delivery, attempt=attempt, status="exhausted")
            return
        next_at = utc_now() + timedelta(seconds=delay)
        await self._deliveries.record_attempt(
            scope, delivery, attempt=attempt, status="pending", next_attempt_at=next_at
        )
        await self._queue.retry_at(claim, next_at)

    async def _stop(self, claim: Claim, delivery: DeliveryRecord, *, error: str) -> None:
        """The delivery FAILED without an attempt."""
        await self._deliveries.stop(claim.scope, delivery.delivery_id, status="failed", error=error)
        self._metrics.deliveries_failed += 1
        await self._queue.done(claim)

    async def _end(
        self,
        claim: Claim,
        delivery: DeliveryRecord,
        *,
        attempt: AttemptRecord,
        status: str,
        disable: str | None = None,
    ) -> None:
        """The delivery's last attempt: SUCCEEDED, FAILED (and its webhook disabled, when
        `disable` names it) or EXHAUSTED."""
        await self._deliveries.record_attempt(
            claim.scope, delivery, attempt=attempt, status=status, next_attempt_at=None
        )
        if disable is not None:
            await self._webhooks.disable(
                claim.scope, disable, reason="the endpoint answered 410 Gone"
            )
            self._metrics.endpoints_disabled += 1
            self._log.info("webhook %s disabled: its endpoint answered 410", disable)
        if status == "succeeded":
            self._metrics.deliveries_succeeded += 1
        elif status == "failed":
            self._metrics.deliveries_failed += 1
        else:
            self._metrics.deliveries_exhausted += 1
        await self._queue.done(claim)

    def _next_delay(self, result: SendResult, *, failed_in_round: int) -> float | None:
        delay = self._schedule.delay_after(failed_in_round)
        if delay is None:
            return None
        if result.status_code in (429, 503) and result.retry_after_s is not None:
            delay = max(delay, result.retry_after_s)
        return delay
