"""The audit hash chain: how an event is hashed, and how a chain is checked.

Event n of an organization stores `previous_hash` (event n-1's hash, GENESIS for
the first) and `hash = sha256(previous_hash + canonical JSON of the event)`.
Editing, deleting or reordering an event breaks the chain at that event. What
the chain alone cannot show (the newest events removed, the whole chain
removed, or everything after an edit re-hashed by someone who can write the
collection) is checked against the head anchored outside MongoDB
(storage/audit/anchor.py), and against a signed checkpoint the caller kept
(storage/core/checkpoints.py), which survives a rewrite of both stores.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from storage.audit.anchor import Anchor

__all__ = ["GENESIS", "ChainCheck", "ChainReport", "event_hash"]

GENESIS = "0" * 64
_FIELDS = (
    "event_id",
    "sequence",
    "time",
    "actor_key_id",
    "actor_peer",
    "organization_id",
    "namespace_id",
    "method",
    "resource",
    "outcome",
    "request_id",
    "peer_address",
    "previous_hash",
)


def _canonical(event: dict[str, Any]) -> bytes:
    body = {k: event.get(k) for k in _FIELDS}
    if event.get("environment") is not None:  # events from before it was recorded have none
        body["environment"] = event["environment"]
    body["time"] = body["time"].isoformat(timespec="milliseconds") if body["time"] else None
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def event_hash(event: dict[str, Any]) -> str:
    return hashlib.sha256(event["previous_hash"].encode() + _canonical(event)).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    intact: bool
    checked: int
    broken_sequence: int = 0
    broken_event_id: str = ""
    reason: str = ""
    # the newest event the chain holds, and the newest sequence anchored outside MongoDB
    last_sequence: int = 0
    last_hash: str = ""
    anchored_sequence: int = 0
    # None: no checkpoint was given; else whether the chain holds its hash at its sequence
    checkpoint_holds: bool | None = None


class ChainCheck:
    """Fed the chain's events in order (`add`), then asked for the verdict (`report`).

    The first break is reported; the events after it are still read for the
    chain's end (its last sequence and hash), which callers may keep and compare.
    A break inside the chain comes first, then one against the kept checkpoint,
    then one against the anchor.
    """

    def __init__(self, anchor: Anchor | None, kept: Anchor | None = None) -> None:
        self._anchor = anchor
        self._kept = kept
        self._at_kept: tuple[str, str] | None = None  # the event id and hash there
        self._previous = GENESIS
        self._expected = 1
        self._checked = 0
        self._broken: tuple[int, str, str] | None = None  # sequence, event id, reason
        self._last_sequence = 0
        self._last_hash = ""
        self._hash_at_anchor = ""

    def add(self, event: dict[str, Any]) -> None:
        sequence = int(event.get("sequence", -1))
        self._last_sequence, self._last_hash = sequence, str(event.get("hash", ""))
        if self._anchor is not None and sequence == self._anchor.sequence:
            self._hash_at_anchor = self._last_hash
        if self._kept is not None and sequence == self._kept.sequence:
            self._at_kept = (str(event.get("event_id", "")), self._last_hash)
        if self._broken is not None:
            return
        self._checked += 1
        reason = ""
        if sequence != self._expected:
            reason = f"expected sequence {self._expected}"
        elif event.get("previous_hash") != self._previous:
            reason = "previous_hash does not match"
        elif event.get("hash") != event_hash(event):
            reason = "content does not match its hash"
        if reason:
            self._broken = (sequence, str(event.get("event_id", "")), reason)
            return
        self._previous, self._expected = str(event["hash"]), self._expected + 1

    def report(self) -> ChainReport:
        against_kept = self._kept_break()
        broken = self._broken or against_kept or self._anchor_break()
        return ChainReport(
            intact=broken is None,
            checked=self._checked,
            broken_sequence=broken[0] if broken else 0,
            broken_event_id=broken[1] if broken else "",
            reason=broken[2] if broken else "",
            last_sequence=self._last_sequence,
            last_hash=self._last_hash,
            anchored_sequence=self._anchor.sequence if self._anchor is not None else 0,
            checkpoint_holds=None if self._kept is None else against_kept is None,
        )

    def _kept_break(self) -> tuple[int, str, str] | None:
        kept = self._kept
        if kept is None or kept.sequence == 0:
            return None
        if self._at_kept is None and self._last_sequence >= kept.sequence:
            return (
                kept.sequence,
                "",
                f"the chain holds no event at the kept checkpoint's sequence {kept.sequence}",
            )
        if self._at_kept is None:
            return (
                self._last_sequence + 1,
                "",
                f"the chain ends at sequence {self._last_sequence} but the kept checkpoint"
                f" is at sequence {kept.sequence}: events were removed",
            )
        event_id, found = self._at_kept
        if found != kept.hash:
            return (
                kept.sequence,
                event_id,
                f"the event at sequence {kept.sequence} does not have the kept checkpoint's"
                " hash: the chain was rewritten",
            )
        return None

    def _anchor_break(self) -> tuple[int, str, str] | None:
        anchor = self._anchor
        if anchor is None:
            return None
        if self._last_sequence < anchor.sequence:
            return (
                self._last_sequence + 1,
                "",
                f"the chain ends at sequence {self._last_sequence} but sequence"
                f" {anchor.sequence} was written: the newest events were removed",
            )
        if self._hash_at_anchor != anchor.hash:
            return (
                anchor.sequence,
                "",
                f"the event at sequence {anchor.sequence} does not match the anchored"
                " head: the chain was rewritten",
            )
        return None
