"""ImportNamespace and ExportNamespace from the attacker's side: every byte, line, item,
message, second and slot a caller can make a backup stream spend is bounded, and the
server keeps answering meanwhile (issue 21, items 2 and 3, and the stream bounds).

The restore bomb runs against the session server and its default limits; the other
bounds against a server of small limits (`bounded`), so that reaching them is cheap."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1.health_pb2 import HealthCheckRequest
from meshgate.v1 import namespace_service_pb2 as pb
from meshgate.v1 import namespace_service_pb2_grpc as pb_grpc

from server.app import RunningServer
from server.backends import Backends
from server.settings import Settings
from storage.data.backup_limits import MAX_IMPORT_MESSAGE_BYTES, BackupLimits
from storage.data.documents import DocumentStore
from tests.server.test_observability import sample, scrape
from tests.support.backups import (
    MANIFEST,
    bomb,
    document_line,
    export_namespace,
    file_of_lines,
    import_namespace,
    import_stream,
    pieces,
)
from tests.support.clients import auth, health_check, rpc_error, trailers_of
from tests.support.error_details import details_of
from tests.support.namespace_clients import Docs
from tests.support.pki import Pki
from tests.support.servers import serving
from tests.support.tenants import Tenant, scope_of
from tests.support.waiting import eventually
from tests.support.wire import stalled_stream_call

# how long a call that must not wait may take: loose, for a loaded CI machine
PROMPT_S = 1.0
GZIP_HEADER = gzip.compress(b"")[:10]
# a deflate block that is not the last and holds nothing: inflates to no bytes at all
EMPTY_BLOCK = b"\x00\x00\x00\xff\xff"


@dataclass
class Bounded:
    server: RunningServer
    stub: pb_grpc.NamespaceServiceAsyncStub
    limits: BackupLimits


@pytest.fixture(scope="module")
async def bounded(
    settings: Settings, pki: Pki, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Bounded]:
    limits = BackupLimits(
        import_max_bytes=4 * 1024 * 1024,
        import_max_inflated_bytes=64 * 1024 * 1024,
        import_max_items=10_000,
        import_deadline_s=4.0,
        import_concurrency=2,
        export_deadline_s=4.0,
        idle_s=1.0,
        spool_dir=tmp_path_factory.mktemp("spool"),
    )
    async with serving(replace(settings, backups=limits), pki) as (running, _, channel):
        yield Bounded(running, pb_grpc.NamespaceServiceStub(channel), limits)


def spooled(directory: Path | None) -> int:
    """Files of this process open in `directory` (a spool is unnamed: only its open file
    descriptor shows it)."""
    assert directory is not None
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(f"{directory}/")
    return count


class Prober:
    """A cheap call every 20 ms while an attack runs: the longest any of them waited."""

    def __init__(self, call: Callable[[], Awaitable[object]]) -> None:
        self._call = call
        self.waits: list[float] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            await self._call()
            self.waits.append(time.monotonic() - started)
            await asyncio.sleep(0.02)

    def __enter__(self) -> Prober:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def aiter_of(data: bytes) -> AsyncIterator[bytes]:
    for piece in pieces(data):
        yield piece


async def eventually_true(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async def check() -> bool:
        return condition()

    await eventually(check, timeout_s=timeout_s, interval_s=0.02)


def slow_loop_ticks(metrics_port: int) -> float:
    """How many of the loop's lag samples so far were over a second."""
    text = scrape(metrics_port)
    return sample(text, "meshgate_event_loop_lag_seconds_count") - sample(
        text, "meshgate_event_loop_lag_seconds_bucket", le="1.0"
    )


async def test_the_restore_bomb_is_refused_at_once_and_the_server_keeps_answering(
    tenant: Tenant, server: RunningServer
) -> None:
    """4 lines of 15 MiB of `[{},{},...]`, 61 KB on the wire: the review's import held the
    event loop 23.5 s (health checks waited as long, /healthz said 503, 947 MiB RSS)."""
    data = bomb()
    target = (await tenant.namespace()).namespace_id
    check = health_check(tenant.channel)
    slow_before = await asyncio.to_thread(slow_loop_ticks, server.metrics_port)
    started = time.monotonic()
    with Prober(lambda: check(HealthCheckRequest(), timeout=30)) as prober:
        error = await rpc_error(import_namespace(tenant, target, data))
        refused_after = time.monotonic() - started
        await asyncio.sleep(0.1)  # a probe or two after the refusal
    slowest = max(prober.waits, default=0.0)
    print(
        f"\nrestore bomb ({len(data)} bytes): refused after {refused_after:.3f} s; "
        f"{len(prober.waits)} health checks meanwhile, the slowest {slowest:.3f} s"
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "a line is longer than 2097152 bytes" in (error.details() or "")
    assert "nothing was written" in (error.details() or "")
    assert refused_after < 5.0
    assert prober.waits and max(prober.waits) < PROMPT_S
    assert await asyncio.to_thread(slow_loop_ticks, server.metrics_port) == slow_before
    assert await Docs(tenant, target).list_ids() == []


async def test_a_long_file_with_a_wrong_checksum_is_refused_at_the_item_cap(
    bounded: Bounded, tenant: Tenant
) -> None:
    """2 million valid lines and a checksum that never matched: refused when the item cap
    is passed, not after the whole file (45 s of CPU in the review)."""
    deflate = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    head = deflate.compress(json.dumps(MANIFEST).encode() + b"\n") + deflate.flush(
        zlib.Z_FULL_FLUSH
    )
    # after a full flush a block stands alone: the same 5,000 lines, sent again and again
    lines = b"".join(document_line(f"d{i}") for i in range(5000))
    block = deflate.compress(lines) + deflate.flush(zlib.Z_FULL_FLUSH)
    generated = 0

    async def two_million_lines() -> AsyncIterator[bytes]:
        """The file's first 30,000 lines, then a pause: a message in flight when the server
        answers early can make a grpc client report INTERNAL instead of the answer."""
        nonlocal generated
        yield head
        while generated < 3 * bounded.limits.import_max_items:
            generated += 5000
            yield block
        await never()

    target = (await tenant.namespace()).namespace_id
    call = import_stream(tenant, target, two_million_lines(), stub=bounded.stub)
    error = await rpc_error(asyncio.wait_for(call, 30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than the 10000 items" in (error.details() or "")
    assert await Docs(tenant, target).list_ids() == []


async def test_a_stalled_export_is_cut_off_after_the_idle_time(
    bounded: Bounded, tenant: Tenant, backends: Backends, pki: Pki
) -> None:
    """A client that stops reading an export held its database cursor for as long as it
    liked: now the server gives up after the idle time, closes what the export held, and
    the stream ends with DEADLINE_EXCEEDED as soon as the client reads again."""
    source = await tenant.namespace()
    scope = await scope_of(tenant, backends, source.namespace_id)
    await DocumentStore(mongo=backends.mongo).create_many(  # random text: ~200 KB compressed
        scope, [(f"d{i:03d}", {"text": secrets.token_hex(2048)}, {}) for i in range(100)]
    )
    path = "/meshgate.v1.NamespaceService/ExportNamespace"
    md = [(k.encode(), v.encode()) for k, v in auth(tenant.admin, source.namespace_id)]
    complete, _ = await export_namespace(tenant, source.namespace_id)
    seen, _, received = await stalled_stream_call(
        bounded.server.port,
        pki,
        path,
        md,
        body=pb.ExportNamespaceRequest().SerializeToString(),
        stall_s=2.5 * bounded.limits.idle_s,
    )
    assert seen.get(b"grpc-status") == b"4", seen  # DEADLINE_EXCEEDED
    assert b"took nothing for 1 s" in seen.get(b"grpc-message", b"")
    assert received < len(complete)  # what was under way when it stopped reading, no more


async def test_an_endless_run_of_empty_deflate_blocks_is_refused_at_the_byte_cap(
    bounded: Bounded, tenant: Tenant
) -> None:
    """Empty deflate blocks inflate to nothing and pass every check while they stream: the
    review spooled 200 MiB of them in 2.5 s. The byte cap stops them; the spool is in the
    configured directory, and gone with the call."""
    sent = 0
    seen_spooling = False

    async def blocks() -> AsyncIterator[bytes]:
        """Empty blocks until one message past the cap, then a pause (as above)."""
        nonlocal sent, seen_spooling
        yield GZIP_HEADER
        message = EMPTY_BLOCK * (64 * 1024 // len(EMPTY_BLOCK))
        while sent <= bounded.limits.import_max_bytes:
            seen_spooling = seen_spooling or spooled(bounded.limits.spool_dir) == 1
            sent += len(message)
            yield message
        await never()

    target = (await tenant.namespace()).namespace_id
    call = import_stream(tenant, target, blocks(), stub=bounded.stub)
    error = await rpc_error(asyncio.wait_for(call, 30))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than the 4194304 bytes" in (error.details() or "")
    assert seen_spooling
    assert spooled(bounded.limits.spool_dir) == 0
    assert os.listdir(bounded.limits.spool_dir or "") == []


async def test_import_messages_are_bounded_in_size_and_number(
    bounded: Bounded, tenant: Tenant
) -> None:
    """At most 1 MiB per message, as docs/backup.md says (the transport takes up to
    MESHGATE_MAX_MESSAGE_BYTES); and at most one message per 8 KiB of the byte cap, so a
    stream of empty messages ends too."""

    async def of(*chunks: bytes) -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    target = (await tenant.namespace()).namespace_id
    big = await rpc_error(import_stream(tenant, target, of(b"x" * (MAX_IMPORT_MESSAGE_BYTES + 1))))
    assert big.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {MAX_IMPORT_MESSAGE_BYTES} bytes" in (big.details() or "")
    cap = bounded.limits.import_max_messages
    empty = await rpc_error(
        import_stream(tenant, target, of(GZIP_HEADER, *[b""] * cap), stub=bounded.stub)
    )
    assert empty.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"at most {cap} messages" in (empty.details() or "")
    data = file_of_lines([document_line("fits")])
    await import_stream(tenant, target, of(*pieces(data, MAX_IMPORT_MESSAGE_BYTES)))
    assert await Docs(tenant, target).list_ids() == ["fits"]


async def never() -> None:
    await asyncio.Event().wait()


async def test_stalled_imports_are_cut_off_and_their_slots_freed(
    bounded: Bounded, tenant: Tenant
) -> None:
    """Two imports that send a header and then nothing take the server's two import slots
    (and two spool files) only for the idle time; a third meanwhile is told to retry."""

    async def header_then_nothing() -> AsyncIterator[bytes]:
        yield GZIP_HEADER
        await never()

    targets = [(await tenant.namespace()).namespace_id for _ in range(3)]
    started = time.monotonic()
    stalled = [
        asyncio.ensure_future(
            rpc_error(import_stream(tenant, t, header_then_nothing(), stub=bounded.stub))
        )
        for t in targets[:2]
    ]
    await eventually_true(lambda: spooled(bounded.limits.spool_dir) == 2)
    busy = await rpc_error(
        import_stream(tenant, targets[2], header_then_nothing(), stub=bounded.stub)
    )
    assert busy.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert dict(trailers_of(busy))["retry-after"] == "5"
    refused = details_of(trailers_of(busy))
    assert refused.reason == "SERVER_BUSY" and refused.quota_failure is not None
    assert [v.subject for v in refused.quota_failure.violations] == ["imports:server"]
    for error in await asyncio.wait_for(asyncio.gather(*stalled), 10 * bounded.limits.idle_s):
        assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "nothing arrived for 1 s" in (error.details() or "")
        assert details_of(trailers_of(error)).reason == "TIME_LIMIT_EXCEEDED"
    assert time.monotonic() - started < 5 * bounded.limits.idle_s
    assert spooled(bounded.limits.spool_dir) == 0
    data = file_of_lines([document_line("after")])
    await import_stream(tenant, targets[2], aiter_of(data), stub=bounded.stub)
    assert await Docs(tenant, targets[2]).list_ids() == ["after"]


async def test_an_import_past_its_deadline_is_stopped(bounded: Bounded, tenant: Tenant) -> None:
    """A client that trickles an empty block now and then, never idle for long, is stopped
    at the import deadline."""

    async def trickle() -> AsyncIterator[bytes]:
        yield GZIP_HEADER
        while True:
            await asyncio.sleep(bounded.limits.idle_s / 3)
            yield EMPTY_BLOCK

    target = (await tenant.namespace()).namespace_id
    started = time.monotonic()
    error = await rpc_error(
        asyncio.wait_for(
            import_stream(tenant, target, trickle(), stub=bounded.stub),
            5 * bounded.limits.import_deadline_s,
        )
    )
    took = time.monotonic() - started
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "longer than the 4 s" in (error.details() or "")
    assert bounded.limits.import_deadline_s <= took < 3 * bounded.limits.import_deadline_s


async def test_a_file_that_inflates_past_the_cap_is_refused(
    bounded: Bounded, tenant: Tenant
) -> None:
    """Valid documents the API accepts, 1.5 MiB each in JSON and 1.5 KB compressed: within
    the byte cap, a file can still inflate to any size; the inflated cap stops it."""
    line = document_line("d", {"s": "\x01" * (250 * 1024)})
    deflate = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    data = deflate.compress(json.dumps(MANIFEST).encode() + b"\n")
    inflated = 0
    while inflated <= bounded.limits.import_max_inflated_bytes:
        data += deflate.compress(line)
        inflated += len(line)
    data += deflate.flush(zlib.Z_SYNC_FLUSH)
    assert len(data) < bounded.limits.import_max_bytes // 8

    target = (await tenant.namespace()).namespace_id
    error = await rpc_error(
        asyncio.wait_for(import_stream(tenant, target, aiter_of(data), stub=bounded.stub), 30)
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inflates to more than the 67108864 bytes" in (error.details() or "")
