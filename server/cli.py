"""The `meshgate` command: `serve`, `bootstrap`, `backup` and `restore` (server/backup_cli.py)."""

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
from dataclasses import replace
from pathlib import Path

from server.app import RunningServer, create_server
from server.backends import Backends, open_backends
from server.backup_cli import add_backup_commands, run_backup_command
from server.bootstrap import bootstrap, write_secret_file
from server.embedded import EmbeddedEngineMissingError
from server.heap import freeze_startup_heap
from server.logs import configure_logging
from server.observability import configure_tracing
from server.settings import ENVIRONMENTS, Settings, SettingsError
from storage.tenancy.organizations import OrganizationStore

__all__ = ["main"]

_LOG = logging.getLogger("meshgate")
DEV_INTERNAL_PEER = "spiffe://meshgate.local/internal/dev"
# `serve --dev` lets webhooks reach receivers on this machine (plain http included)
DEV_WEBHOOK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


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


async def _serve(settings: Settings, *, dev: bool) -> int:
    started = time.perf_counter()
    backends = await open_backends(settings)
    for line in backends.embedded:
        _LOG.info("embedded backend: %s", line)
    try:
        key_file = await _dev_key(settings, backends) if dev else None
        running = await create_server(settings, backends)
        freeze_startup_heap()  # no full collection walks the start-up heap (server/heap.py)
        try:
            _LOG.info(
                "serving on %s (%s) in %.2fs",
                settings.listen,
                "PLAINTEXT" if settings.insecure else "mTLS, client certificates required",
                time.perf_counter() - started,
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


def _serve_workers(settings: Settings, args: argparse.Namespace) -> int:
    """N worker processes on one port (SO_REUSEPORT), one event loop each; SIGTERM drains all."""
    embedded = [
        name
        for name, value in (
            ("MESHGATE_MONGODB_URI", settings.mongodb_uri),
            ("MESHGATE_REDIS_URL", settings.redis_url),
            ("MESHGATE_QDRANT_URL", settings.qdrant_url),
        )
        if value is None
    ]
    if embedded or args.dev:
        print(
            "error: --workers needs shared backends (set "
            + (", ".join(embedded) or "them")
            + ") and cannot be combined with --dev: embedded backends live inside one process",
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


async def _bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    if args.plan not in settings.plans:
        print(
            f"error: unknown plan {args.plan!r}; plans: {', '.join(settings.plans)}",
            file=sys.stderr,
        )
        return 2
    backends = await open_backends(settings, with_qdrant=False)
    try:
        existing = await OrganizationStore(mongo=backends.mongo).count()
        if existing and not args.another:
            print(
                f"error: {existing} organization(s) exist already; pass --another to add one",
                file=sys.stderr,
            )
            return 2
        result = await bootstrap(
            backends, name=args.name, plan=args.plan, environment=args.environment
        )
    finally:
        await backends.close()
    if args.key_file:
        write_secret_file(args.key_file, result.secret)
        secret_line = f"secret:          written to {args.key_file}"
    else:
        secret_line = f"secret:          {result.secret}"
    print(
        f"organization_id: {result.organization_id}\nkey_id:          {result.key_id}\n"
        f"{secret_line}\nThe secret is shown once; store it now."
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshgate", description="meshgate gRPC security core")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gRPC server (settings from MESHGATE_*)")
    serve.add_argument("--listen", help="host:port (default MESHGATE_LISTEN or 127.0.0.1:50051)")
    serve.add_argument(
        "--insecure", action="store_true", help="plaintext, no client certificates (debug only)"
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT); needs external backends",
    )
    serve.add_argument(
        "--dev",
        action="store_true",
        help="bootstrap a dev organization and ADMIN key on first run; allow the dev internal"
        " cert and webhooks to this machine",
    )
    boot = sub.add_parser("bootstrap", help="create an organization and an ADMIN key")
    boot.add_argument("--name", default="default")
    boot.add_argument("--plan", default="free")
    boot.add_argument("--environment", choices=ENVIRONMENTS, default="production")
    boot.add_argument(
        "--key-file", type=Path, help="write the secret here (0600) instead of stdout"
    )
    boot.add_argument("--another", action="store_true", help="add an organization to a used store")
    add_backup_commands(sub)
    args = parser.parse_args(argv)
    if args.command in ("backup", "restore"):  # clients of a running server: no settings
        return run_backup_command(args)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        if args.listen:
            settings = replace(settings, listen=args.listen)
        if args.insecure:
            settings = replace(settings, insecure=True)
        if args.dev and not settings.internal_peers:
            settings = replace(settings, internal_peers=frozenset({DEV_INTERNAL_PEER}))
        if args.dev and not settings.webhook_allowed_hosts:
            settings = replace(settings, webhook_allowed_hosts=DEV_WEBHOOK_HOSTS)
        if args.dev and "MESHGATE_DRAIN_DELAY_S" not in os.environ:
            settings = replace(settings, drain_delay_s=0.0)  # no load balancer to tell
    configure_logging(settings.log_level)
    if args.command == "serve":
        try:
            configure_tracing()
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if args.command == "serve" and args.workers != 1:
        if not 1 <= args.workers <= 64:
            print("error: --workers must be between 1 and 64", file=sys.stderr)
            return 2
        return _serve_workers(settings, args)
    with contextlib.suppress(KeyboardInterrupt):
        try:
            if args.command == "serve":
                return asyncio.run(_serve(settings, dev=args.dev))
            return asyncio.run(_bootstrap(settings, args))
        except EmbeddedEngineMissingError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 130


if __name__ == "__main__":
    sys.exit(main())
