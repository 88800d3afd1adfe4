"""`meshgate serve`: the stores, the server, the signals and the drain; `--workers` and `--dev`.

Configuration is checked before anything connects (every store's URL unless `--dev`,
the TLS files unless `--insecure`); then the stores are waited for
(server/stores.py), the server starts, and one line says which version serves where,
with the port actually bound.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.bootstrap import bootstrap, write_secret_file
from server.heap import freeze_startup_heap
from server.settings import Settings
from server.stores import require_store_urls
from server.tls import read_tls_files
from server.version import version_line
from storage.tenancy.organizations import OrganizationStore

__all__ = ["check_configuration", "serve", "serve_workers"]

_LOG = logging.getLogger("meshgate")


def check_configuration(settings: Settings, *, dev: bool) -> None:
    """What can be known wrong before connecting anywhere: SettingsError naming it."""
    if not dev:
        require_store_urls(settings)
    if not settings.insecure:
        read_tls_files(
            cert=settings.tls_cert, key=settings.tls_key, client_ca=settings.tls_client_ca
        )


def _grpcurl_hint(settings: Settings, port: int, key_file: Path) -> str:
    tls = (
        "-plaintext"
        if settings.insecure
        else "-cacert certs/ca.pem -cert certs/client.pem -key certs/client-key.pem"
    )
    return "\n".join(
        [
            f"meshgate is serving on 127.0.0.1:{port}. Try:",
            f"  export MG_KEY=$(cat {key_file})",
            f"  grpcurl {tls} localhost:{port} list",
            f'  grpcurl {tls} -H "authorization: Bearer $MG_KEY" '
            f"localhost:{port} meshgate.v1.OrganizationService/GetOrganization",
        ]
    )


async def _dev_key(settings: Settings, backends: Backends) -> Path:
    """First run on a fresh data dir: an organization and an ADMIN key in var/dev-admin-key."""
    key_file = settings.data_dir / "dev-admin-key"
    if await OrganizationStore(mongo=backends.mongo).count() == 0:
        result = await bootstrap(backends, name="dev", plan="pro", environment="development")
        write_secret_file(key_file, result.secret)
        _LOG.info(
            "bootstrapped organization %s with ADMIN key %s (secret in %s)",
            result.organization_id,
            result.key_id,
            key_file,
        )
    return key_file


def _bound(listen: str, port: int) -> str:
    """The listen address with the port the system gave (`:0` asks for any free one)."""
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"


async def serve(settings: Settings, *, dev: bool) -> int:
    started = time.perf_counter()
    backends = await open_backends(settings, dev=dev)
    try:
        key_file = await _dev_key(settings, backends) if dev else None
        running = await create_server(settings, backends)
        freeze_startup_heap()  # no full collection walks the start-up heap (server/heap.py)
        try:
            metrics = ""
            if settings.metrics_listen:
                where = _bound(settings.metrics_listen, running.metrics_port)
                metrics = f"; metrics and probes on http://{where}"
            _LOG.info(
                "%s serving on %s (%s) in %.2fs%s",
                version_line(),
                _bound(settings.listen, running.port),
                "PLAINTEXT" if settings.insecure else "mTLS, client certificates required",
                time.perf_counter() - started,
                metrics,
            )
            if key_file is not None:
                print(_grpcurl_hint(settings, running.port, key_file), flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            await stop.wait()
            await _drain_delay(running, settings, stop)
        finally:  # a signal, a crash or a cancellation: drain before the stores close
            _LOG.info("draining: up to %.1fs for in-flight calls", settings.shutdown_grace_s)
            await running.stop(settings.shutdown_grace_s)
    finally:
        await backends.close()
    _LOG.info("stopped")
    return 0


async def _drain_delay(
    running: RunningServer, settings: Settings, signalled: asyncio.Event
) -> None:
    """Health NOT_SERVING at once, then calls are still served for the drain delay, so that
    load balancers polling health and endpoint lists (Kubernetes removes a terminating pod
    from its Service asynchronously) stop sending calls before the listener closes. A
    second signal cuts the delay short."""
    await running.begin_drain()
    if settings.drain_delay_s <= 0:
        return
    _LOG.info("draining: health is NOT_SERVING; still serving for %.1fs", settings.drain_delay_s)
    signalled.clear()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(signalled.wait(), settings.drain_delay_s)


def serve_workers(settings: Settings, args: argparse.Namespace) -> int:
    """N worker processes on one port (SO_REUSEPORT), one event loop each; SIGTERM drains all."""
    if args.dev:
        print(
            "error: --workers cannot be combined with --dev: the embedded engines serve one"
            " process",
            file=sys.stderr,
        )
        return 2
    if settings.qdrant_url == ":memory:":
        _LOG.warning("each worker has its own in-memory Qdrant: for benchmarks and tests only")
    command = [sys.executable, "-m", "server.cli", "serve", "--listen", settings.listen]
    if settings.insecure:
        command.append("--insecure")
    # our own interpreter and module, no shell: nothing untrusted reaches the command
    children = []
    for index in range(args.workers):
        env = dict(os.environ)
        if settings.metrics_listen:  # one metrics port per worker: base, base+1, ...
            host, _, port = settings.metrics_listen.rpartition(":")
            env["MESHGATE_METRICS_LISTEN"] = f"{host}:{int(port) + index if int(port) else 0}"
        children.append(subprocess.Popen(command, env=env))  # noqa: S603
    _LOG.info(
        "started %d workers on %s: %s", args.workers, settings.listen, [c.pid for c in children]
    )

    def forward(signum: int, _frame: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    codes = [child.wait() for child in children]
    return max(codes)
