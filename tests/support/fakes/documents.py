"""Documents as MongoDB gives them back: what the fakes keep, so a fake's answers carry
the same types and precision as the store's (datetimes to the millisecond, in UTC)."""

from __future__ import annotations

from datetime import UTC
from typing import Any

import bson
from bson.codec_options import CodecOptions

__all__ = ["stored"]

_AS_THE_STORE_READS: CodecOptions[dict[str, Any]] = CodecOptions(tz_aware=True, tzinfo=UTC)


def stored(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` after a round trip through BSON, as the driver (tz_aware) would read it."""
    return bson.decode(bson.encode(doc), codec_options=_AS_THE_STORE_READS)
