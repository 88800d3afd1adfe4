"""A gRPC call written by hand over HTTP/2 + mTLS (h2), for what a gRPC client refuses
to send: non-ASCII or non-UTF-8 header values, repeated security headers, request
bodies that do not decode, and the like."""

from __future__ import annotations

import asyncio
import ssl
import struct

import h2.config
import h2.connection
import h2.events
import h2.settings

from tests.support.pki import Pki

__all__ = ["raw_http2_call", "seconds_until_goaway", "stalled_stream_call"]


async def _open_h2(
    port: int, pki: Pki, identity: str = "client"
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An mTLS connection to 127.0.0.1:`port` offering only h2, presenting the client
    certificate `<identity>.pem`."""
    context = ssl.create_default_context(cafile=str(pki.path("ca.pem")))
    context.load_cert_chain(pki.path(f"{identity}.pem"), pki.path(f"{identity}-key.pem"))
    context.set_alpn_protocols(["h2"])
    return await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="localhost"
    )


def _request_headers(path: str) -> list[tuple[bytes, bytes]]:
    """The pseudo-headers and headers of a gRPC call to `path`, as a client sends them."""
    return [
        (b":method", b"POST"),
        (b":scheme", b"https"),
        (b":path", path.encode()),
        (b":authority", b"localhost"),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ]


async def raw_http2_call(
    port: int,
    pki: Pki,
    path: str,
    headers: list[tuple[bytes, bytes]],
    *,
    body: bytes = b"",
    identity: str = "client",
) -> dict[bytes, bytes]:
    """One unary call to `path` on 127.0.0.1:`port` whose message is `body` (the bytes of a
    serialized request, well-formed or not; empty by default), with `headers` after the
    pseudo-headers, in order, repeated ones included, over a connection that presents the
    client certificate `<identity>.pem`; returns the response's headers and trailers
    together."""
    reader, writer = await _open_h2(port, pki, identity)
    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, validate_outbound_headers=False)
    )
    conn.initiate_connection()
    conn.send_headers(1, _request_headers(path) + headers)
    # the gRPC frame: not compressed, the message's length, the message
    conn.send_data(1, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
    writer.write(conn.data_to_send())
    seen: dict[bytes, bytes] = {}
    try:
        while True:
            data = await asyncio.wait_for(reader.read(65536), 5)
            assert data, "the server closed the connection without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.update(dict(event.headers))
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return seen
            writer.write(conn.data_to_send())
    finally:
        # dropped, not closed: asyncio's TLS close waits up to 30 s for the server's
        # close_notify, and both ends hold the connection meanwhile (the abuse soak saw
        # a server's descriptors and memory grow by one connection per call)
        writer.transport.abort()


async def stalled_stream_call(
    port: int,
    pki: Pki,
    path: str,
    headers: list[tuple[bytes, bytes]],
    *,
    body: bytes = b"",
    window: int = 1024,
    stall_s: float = 3.0,
    wait_s: float = 10.0,
) -> tuple[dict[bytes, bytes], int, int]:
    """A call whose client stops reading for `stall_s`: it offers a stream window of
    `window` bytes and acknowledges nothing it receives, so the server can send no more
    than that; then it opens its windows wide and reads on to the end of the stream (at
    most `wait_s`). Returns the headers and trailers, and the bytes of data received while
    stalled and in all."""
    reader, writer = await _open_h2(port, pki)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
    conn.send_headers(1, _request_headers(path) + headers)
    conn.send_data(1, b"\x00" + struct.pack(">I", len(body)) + body, end_stream=True)
    writer.write(conn.data_to_send())
    loop = asyncio.get_running_loop()
    seen: dict[bytes, bytes] = {}
    received = stalled = 0
    stalling = True
    resume_at = loop.time() + stall_s
    give_up_at = resume_at + wait_s
    try:
        while True:
            if stalling and loop.time() >= resume_at:
                stalling, stalled = False, received
                conn.acknowledge_received_data(received, 1)
                conn.increment_flow_control_window(2**24)
                conn.increment_flow_control_window(2**24, stream_id=1)
                conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**24})
                writer.write(conn.data_to_send())
            until = resume_at if stalling else give_up_at
            try:
                data = await asyncio.wait_for(reader.read(65536), max(0.0, until - loop.time()))
            except TimeoutError:
                if stalling:
                    continue
                raise AssertionError("the stream did not end") from None
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    seen.update(dict(event.headers))
                if isinstance(event, h2.events.DataReceived):
                    received += len(event.data)
                    if not stalling:
                        conn.acknowledge_received_data(len(event.data), 1)
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return seen, stalled if not stalling else received, received
            writer.write(conn.data_to_send())
        return seen, stalled, received
    finally:
        writer.close()


async def seconds_until_goaway(port: int, pki: Pki, timeout_s: float) -> float | None:
    """Seconds until the server sends GOAWAY on a new mTLS HTTP/2 connection on which no
    call is ever made, or None if it has not after `timeout_s` (or closed it without one)."""
    try:
        reader, writer = await _open_h2(port, pki)
    except ConnectionResetError:  # closed as it was accepted
        return None
    started = asyncio.get_running_loop().time()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    writer.write(conn.data_to_send())
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                data = await reader.read(65536)
                if not data:
                    return None
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.ConnectionTerminated):
                        return asyncio.get_running_loop().time() - started
                writer.write(conn.data_to_send())  # SETTINGS and PING acknowledgements
    except (TimeoutError, ConnectionResetError):
        return None
    finally:
        writer.transport.abort()
