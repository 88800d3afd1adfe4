"""A refused call leaves nothing behind. grpc keeps the AbortError of an aborted call,
with the refused error as its context, past the call's end (for some calls until the
server stops); if that error kept its traceback, the failed handler's frames lived on,
and with them whatever they held: a refused restore bomb kept its 1.5 MiB lines, about
4 MiB of a server's memory per 61 KB call (129 MiB after 30 of them, found by the
abuse soak, tests/server/test_abuse_soak.py)."""

from __future__ import annotations

import gc
import types
from collections.abc import AsyncIterator

import grpc

from server.app import RunningServer
from tests.support.backups import bomb, import_stream, pieces
from tests.support.tenants import Tenant

BOMBS = 5


def live_decoder_frames() -> int:
    """Frames of the backup decoder still alive after a full collection."""
    gc.collect()
    return sum(
        1
        for o in gc.get_objects()
        if isinstance(o, types.FrameType) and o.f_code.co_filename.endswith("backup_format.py")
    )


async def test_a_refused_restore_keeps_no_frame_of_its_handler(
    tenant: Tenant, server: RunningServer
) -> None:
    data = bomb()
    target = (await tenant.namespace()).namespace_id

    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces(data):
            yield piece

    codes: list[grpc.StatusCode] = []
    for _ in range(BOMBS):
        try:
            await import_stream(tenant, target, chunks())
        except grpc.aio.AioRpcError as error:
            codes.append(error.code())
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * BOMBS
    assert live_decoder_frames() == 0
