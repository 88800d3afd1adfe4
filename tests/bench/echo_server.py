"""The baseline: a bare grpc.aio server with the same grpcio, TLS and client-certificate
settings as meshgate, answering one unary method with its request bytes."""

from __future__ import annotations

import argparse
import asyncio
import signal
from pathlib import Path

import grpc

METHOD = "/bench.Echo/Echo"


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def serve(port: int, certs: Path) -> None:
    server = grpc.aio.server()
    handler = _echo
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(handler)}
            ),
        )
    )
    credentials = grpc.ssl_server_credentials(
        [((certs / "server-key.pem").read_bytes(), (certs / "server.pem").read_bytes())],
        root_certificates=(certs / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.certs))


if __name__ == "__main__":
    main()
