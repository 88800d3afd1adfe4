"""A webhook receiver that misbehaves on purpose: it hangs (reads the request, never
answers), resets connections (accepts, then closes with RST), or answers 204. The mode
can change while it runs, so a test can end the fault and watch deliveries recover."""

from __future__ import annotations

import socket
import socketserver
import struct
import threading
import time
from typing import Literal

__all__ = ["FaultyReceiver"]

Mode = Literal["hang", "reset", "ok"]


class FaultyReceiver:
    def __init__(self, mode: Mode) -> None:
        self.mode: Mode = mode
        self.connections: dict[str, int] = {"hang": 0, "reset": 0, "ok": 0}
        self._stopping = threading.Event()
        receiver = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                receiver._handle(self.request)

        self._server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def start(self) -> FaultyReceiver:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()

    def _handle(self, conn: socket.socket) -> None:
        mode = self.mode
        self.connections[mode] += 1
        if mode == "reset":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return  # closed by the server with linger 0: a TCP reset
        request = self._read_request(conn)
        if mode == "hang":
            while not self._stopping.is_set() and self.mode == "hang":
                time.sleep(0.05)  # never answers; the sender gives up
            return
        if request:
            conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")

    @staticmethod
    def _read_request(conn: socket.socket) -> bytes:
        conn.settimeout(5)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return data
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                body += chunk
        except OSError:
            return b""
        return data
