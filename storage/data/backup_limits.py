"""What one namespace export or import may cost the server: bytes, items, time, slots.

A backup stream comes from a tenant's ADMIN key, and an import's file from
anywhere, so each of these has a bound (docs/backup.md, "Limits", and the
`MESHGATE_IMPORT_*`, `MESHGATE_EXPORT_DEADLINE_S`, `MESHGATE_BACKUP_IDLE_S` and
`MESHGATE_SPOOL_DIR` settings): what one import may send (compressed bytes,
messages, inflated bytes, items), how long a whole import or export may take,
how long a stream may stand still, and how many imports one server runs at
once, which with the byte bound sizes the spool volume (deploy/base).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from storage.core.errors import DeadlineExceededError, InvalidArgumentError

__all__ = ["MAX_IMPORT_MESSAGE_BYTES", "BackupLimits", "within_idle"]

# what docs/backup.md and the proto promise a client may send in one ImportNamespace message
MAX_IMPORT_MESSAGE_BYTES = 1024 * 1024
# an import may send one message per this many bytes of its byte limit (131,072 messages
# for 1 GiB): a stream of empty messages is bounded like one of full ones
_BYTES_PER_MESSAGE = 8 * 1024


@dataclass(frozen=True, slots=True)
class BackupLimits:
    # compressed bytes one import may send: the most one import spools to disk
    import_max_bytes: int = 1024**3
    # what the file may inflate to: bounds the CPU one import spends decoding and checking
    import_max_inflated_bytes: int = 8 * 1024**3
    import_max_items: int = 1_000_000
    # a whole ImportNamespace call, receiving, checking and writing
    import_deadline_s: float = 1800.0
    # imports running at once on one server (more are RESOURCE_EXHAUSTED); with
    # import_max_bytes, the most the spool directory holds
    import_concurrency: int = 2
    # a whole ExportNamespace call
    export_deadline_s: float = 1800.0
    # an import that receives nothing, or an export whose client takes nothing, this long
    idle_s: float = 60.0
    # where imports are spooled; None: the system's temporary directory
    spool_dir: Path | None = None

    @property
    def import_max_messages(self) -> int:
        return max(16, self.import_max_bytes // _BYTES_PER_MESSAGE)

    def check_message(self, *, size: int, messages: int, received: int) -> None:
        """One more ImportNamespace message of `size` bytes, the `messages`-th, `received`
        bytes in all: refused past any bound, before it is spooled."""
        if size > MAX_IMPORT_MESSAGE_BYTES:
            raise InvalidArgumentError(
                f"an ImportNamespace message may carry at most {MAX_IMPORT_MESSAGE_BYTES} bytes"
                f" of data; this one carries {size}"
            )
        if messages > self.import_max_messages:
            raise InvalidArgumentError(
                f"an import may send at most {self.import_max_messages} messages on this"
                " server; send the file in pieces of 64 KiB to 1 MiB"
            )
        if received > self.import_max_bytes:
            raise InvalidArgumentError(
                f"the file is larger than the {self.import_max_bytes} bytes this server takes"
                " in one import"
            )


async def within_idle[T](stream: AsyncIterable[T], idle_s: float) -> AsyncIterator[T]:
    """The items of `stream`; DEADLINE_EXCEEDED when none comes for `idle_s`."""
    items = aiter(stream)
    while True:
        try:
            async with asyncio.timeout(idle_s):
                item = await anext(items)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise DeadlineExceededError(
                f"nothing arrived for {idle_s:g} s; the import was stopped"
            ) from None
        yield item
