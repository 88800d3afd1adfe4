"""Access lines written in blocks, as nginx's `access_log ... buffer= flush=` does.

Written one by one, every call's access line cost a `write` system call and the logging
handler's flush on the event loop's thread: measured in place, that was the largest
item of the access log's cost (docs/performance.md). Here access lines
(interceptors/access_log.py) are kept in memory and written together: when
`FLUSH_AFTER_S` has passed since the first of them, when they reach `MAX_BYTES`, before
any other record, and when the handler is flushed or closed (a normal exit, a drain
after SIGTERM and an unhandled exception all end in `logging.shutdown`, which flushes).

Every other record (start-up, warnings, errors) is written at once, after the access
lines waiting before it, so the order of lines is kept and nothing but access lines
ever waits. What a crash can lose: a process killed without a chance to run its exit
handlers (SIGKILL, the kernel's out-of-memory killer, a crash of the interpreter) loses
the access lines of its last `FLUSH_AFTER_S` at most, never more than `MAX_BYTES`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TextIO

from interceptors.access_log import AccessRecord

__all__ = ["FLUSH_AFTER_S", "MAX_BYTES", "BufferedAccessLines"]

FLUSH_AFTER_S = 0.05
MAX_BYTES = 64 * 1024


class BufferedAccessLines(logging.StreamHandler[TextIO]):
    """A stream handler that holds access lines for at most `flush_after_s` (and at most
    `max_bytes`); a thread writes them, so the event loop makes no system call for them."""

    def __init__(
        self,
        stream: TextIO,
        *,
        flush_after_s: float = FLUSH_AFTER_S,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        super().__init__(stream)
        self._flush_after_s = flush_after_s
        self._max_bytes = max_bytes
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._due = threading.Event()  # set when the first line of a block is held
        self._closing = False
        self._writer = threading.Thread(
            target=self._write_when_due, name="meshgate-access-lines", daemon=True
        )
        self._writer.start()

    def emit(self, record: logging.LogRecord) -> None:
        """Called under the handler's lock (logging.Handler.handle)."""
        try:
            line = self.format(record)
            self._pending.append(line)
            if not isinstance(record, AccessRecord):
                self._write_pending()
                return
            self._pending_bytes += len(line) + 1
            if self._pending_bytes >= self._max_bytes:
                self._write_pending()
            elif len(self._pending) == 1:
                self._due.set()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self._closing = True
        self.flush()
        self._due.set()
        super().close()

    def _write_pending(self) -> None:
        """Under the lock: the held lines in one write, then the stream's flush."""
        if self._pending:
            text = "\n".join(self._pending) + "\n"
            self._pending.clear()
            self._pending_bytes = 0
            self.stream.write(text)
        if hasattr(self.stream, "flush"):
            self.stream.flush()

    def _write_when_due(self) -> None:
        while not self._closing:
            self._due.wait()
            if self._closing:
                return
            time.sleep(self._flush_after_s)  # a few more lines join the block's first
            self._due.clear()
            try:
                self.flush()
            except (OSError, ValueError):  # stderr itself failed: nowhere to report it
                continue
