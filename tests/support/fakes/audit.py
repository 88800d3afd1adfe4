"""The audit trail in memory: where the audit step queues events (`AuditQueue`,
interceptors/audit.py), with the log's `flush`, `list_page` and `verify`."""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any

from storage.audit.chain import GENESIS, ChainCheck, ChainReport, event_hash
from storage.core.clock import utc_now
from storage.core.errors import InvalidArgumentError, UnavailableError
from storage.core.ids import random_base62
from storage.core.pages import decode_page_token, encode_page_token
from tests.support.fakes.documents import stored

__all__ = ["FakeAuditLog"]

_SEQUENCE_TOKEN = re.compile(r"^[0-9]{1,12}$")
_FILTERS = ("actor_key_id", "resource", "namespace_id", "outcome")


class FakeAuditLog:
    """`AuditLog` without MongoDB: a bounded queue (`check_room` refuses when it is full,
    nothing queued is dropped), and per organization a hash chain built with the log's own
    `event_hash`, listed newest first with the log's filters and page tokens
    (tests/contracts/test_audit_log.py holds it to the log's answers)."""

    def __init__(self, *, max_queue: int = 100_000, now: Callable[[], datetime] = utc_now) -> None:
        self._queue: deque[dict[str, Any]] = deque()
        self._max = max_queue
        self._now = now
        self._chains: dict[str, list[dict[str, Any]]] = {}

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def saturated(self) -> bool:
        return len(self._queue) >= self._max

    def check_room(self) -> None:
        if self.saturated:
            raise UnavailableError("the audit trail is unavailable; audited calls are refused")

    def record(self, **fields: Any) -> None:
        self._queue.append({**fields, "time": self._now(), "event_id": "aud_" + random_base62(20)})

    async def flush(self) -> None:
        while self._queue:
            event = self._queue.popleft()
            chain = self._chains.setdefault(event["organization_id"], [])
            chained = {
                **event,
                "sequence": len(chain) + 1,
                "previous_hash": chain[-1]["hash"] if chain else GENESIS,
            }
            chained["hash"] = event_hash(chained)
            chain.append(stored(chained))

    async def list_page(
        self,
        *,
        organization_id: str,
        environment: str,
        only_namespaces: frozenset[str],
        filters: dict[str, Any],
        start: datetime | None,
        end: datetime | None,
        page_size: int,
        page_token: str,
    ) -> tuple[list[dict[str, Any]], str]:
        wanted = {name: filters[name] for name in _FILTERS if filters.get(name)}
        for name, value in wanted.items():
            if not isinstance(value, str) or len(value) > 200:
                raise InvalidArgumentError(f"{name} must be at most 200 characters")
        action = filters.get("action") or ""
        if action and (len(action) > 200 or not re.fullmatch(r"[A-Za-z0-9_./]+", action)):
            raise InvalidArgumentError("action must be a method name")
        after = decode_page_token(page_token, kind="audit", id_pattern=_SEQUENCE_TOKEN)
        below = int(after) if after is not None else None

        def listed(event: dict[str, Any]) -> bool:
            method = event.get("method", "")
            return (
                (below is None or event["sequence"] < below)
                and event.get("environment") == environment
                and (not only_namespaces or event.get("namespace_id") in only_namespaces)
                and all(event.get(k) == v for k, v in wanted.items())
                and (not action or method == action or method.endswith("/" + action))
                and (start is None or event["time"] >= start)
                and (end is None or event["time"] < end)
            )

        matching = [e for e in reversed(self._chains.get(organization_id, [])) if listed(e)]
        items, more = matching[:page_size], len(matching) > page_size
        token = encode_page_token(kind="audit", after=str(items[-1]["sequence"])) if more else ""
        return items, token

    async def verify(self, organization_id: str) -> ChainReport:
        check = ChainCheck(None)
        for event in self._chains.get(organization_id, []):
            check.add(event)
        return check.report()
