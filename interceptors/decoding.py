"""Request messages decoded by the chain, after admission, and malformed input counted.

grpc would decode a request before any interceptor runs, so an unauthenticated caller
could make the server parse a body, and a body that does not decode would be answered
by grpc itself (UNKNOWN, the parser's text, a traceback in the log, no request id). The
chain registers every handler without its request deserializer (grpc then hands over
the raw bytes) and decodes here once every step has admitted the call; a stream's
messages are decoded one by one as the servicer reads them.

Malformed input (a body that does not decode, a header that is not UTF-8) is
INVALID_ARGUMENT with a fixed message, counted in `meshgate_malformed_requests_total`
by method and part, and reported by at most one warning a minute: an attacker who sends
it in a loop fills a counter, not the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from interceptors.metrics import Metrics, method_label
from storage.core.errors import InvalidArgumentError, Reason

__all__ = ["MALFORMED_MESSAGE", "Decoder", "MalformedRequestError", "MalformedRequests"]

MALFORMED_MESSAGE = "request message is malformed"
Decoder = Callable[[bytes], Any]


class MalformedRequestError(InvalidArgumentError):
    """The request message does not decode (corrupt, not UTF-8, nested too deeply)."""

    default_reason = Reason.REQUEST_MALFORMED

    def __init__(self) -> None:
        super().__init__(MALFORMED_MESSAGE)


class MalformedRequests:
    """Counts malformed input per method and part (`message`, `metadata`); warns at most
    once per `interval_s` with how many were refused since the last warning."""

    def __init__(
        self,
        *,
        metrics: Metrics | None,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._metrics = metrics
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._next_warning = 0.0
        self._unreported = 0

    def seen(self, method: str, part: str) -> None:
        if self._metrics is not None:
            self._metrics.malformed_requests.labels(method_label(method), part).inc()
        self._unreported += 1
        now = self._clock()
        if now >= self._next_warning:
            self._next_warning = now + self._interval_s
            self._logger.warning(
                "refused %d malformed request(s) since the last warning, the latest a %s of %s;"
                " see meshgate_malformed_requests_total",
                self._unreported,
                part,
                method,
            )
            self._unreported = 0

    def decode(self, decoder: Decoder, raw: bytes, method: str) -> Any:
        """The message, or MalformedRequestError (counted) when it does not decode."""
        try:
            return decoder(raw)
        except Exception:  # DecodeError, and whatever else a parser raises on bad input
            self.seen(method, "message")
            raise MalformedRequestError() from None

    async def decode_stream(
        self, decoder: Decoder, raw: AsyncIterable[bytes], method: str
    ) -> AsyncIterator[Any]:
        """A request stream's messages, each decoded when the servicer asks for it."""
        async for item in raw:
            yield self.decode(decoder, item, method)
