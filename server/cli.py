"""The `meshgate` command: `serve` (server/serving.py), `bootstrap`, `backup` and `restore`
(server/backup_cli.py), `audit verify` and `audit keygen` (server/audit_cli.py), `--version`.

A configuration or environment error ends the command with one line on stderr
(`error: ...`) and its exit code (server/failures.py; docs/operations.md, Commands);
anything else is a bug, logged with its traceback (exit code 1).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from server.audit_cli import add_audit_commands, run_audit_command
from server.backends import mongo_only
from server.backup_cli import add_backup_commands, run_backup_command
from server.bootstrap import bootstrap, write_secret_file
from server.embedded import EmbeddedEngineError, EmbeddedEngineMissingError
from server.failures import (
    EXIT_BUG,
    EXIT_CONFIGURATION,
    EXIT_ENVIRONMENT,
    EXIT_INTERRUPTED,
    EnvironmentFailure,
)
from server.logs import configure_logging
from server.observability import configure_tracing
from server.serving import check_configuration, serve, serve_workers
from server.settings import ENVIRONMENTS, Settings, SettingsError
from server.version import version_line
from storage.backends.mongo import MongoStore
from storage.tenancy.organizations import OrganizationStore

__all__ = ["build_parser", "main"]

_LOG = logging.getLogger("meshgate")
DEV_INTERNAL_PEER = "spiffe://meshgate.local/internal/dev"
# `serve --dev` lets webhooks reach receivers on this machine (plain http included)
DEV_WEBHOOK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

SETTINGS_PAGE = "docs/operations.md"
_SETTINGS_NOTE = (
    f"Settings come from MESHGATE_* environment variables: {SETTINGS_PAGE}\n"
    "(Configuration) lists every one with its default; its Commands section\n"
    "describes each command and lists the exit codes."
)


async def _bootstrap(settings: Settings, args: argparse.Namespace) -> int:
    if args.plan not in settings.plans:
        print(
            f"error: unknown plan {args.plan!r}; plans: {', '.join(settings.plans)}",
            file=sys.stderr,
        )
        return EXIT_CONFIGURATION
    async with mongo_only(settings, dev=args.dev) as mongo:
        existing = await OrganizationStore(mongo=mongo).count()
        if existing and not args.another:
            print(
                f"error: {existing} organization(s) exist already; pass --another to add one",
                file=sys.stderr,
            )
            return EXIT_CONFIGURATION
        result = await bootstrap(
            _Stores(mongo), name=args.name, plan=args.plan, environment=args.environment
        )
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


@dataclass(frozen=True)
class _Stores:
    """The one store `bootstrap` writes to."""

    mongo: MongoStore


class _PrintVersion(argparse.Action):
    """`--version`: the revision is looked up (git, when run from a checkout) only when asked,
    not every time the parser is built."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(version_line())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    text = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="meshgate",
        description="meshgate: the security core of an internal gRPC service mesh.\n"
        "`meshgate serve --dev` runs it on this machine with embedded stores.",
        epilog=_SETTINGS_NOTE,
        formatter_class=text,
    )
    parser.add_argument(
        "--version", action=_PrintVersion, nargs=0, help="print the version and the revision"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve_command = sub.add_parser(
        "serve",
        help="run the gRPC server",
        description="Run the gRPC server. Without --dev, MESHGATE_MONGODB_URI,\n"
        "MESHGATE_REDIS_URL and MESHGATE_QDRANT_URL must all be set.",
        epilog=_SETTINGS_NOTE,
        formatter_class=text,
    )
    serve_command.add_argument(
        "--listen", help="host:port (default MESHGATE_LISTEN or 127.0.0.1:50051; port 0: any)"
    )
    serve_command.add_argument(
        "--insecure", action="store_true", help="plaintext, no client certificates (debug only)"
    )
    serve_command.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes sharing the port (SO_REUSEPORT, 1-64)",
    )
    serve_command.add_argument(
        "--dev",
        action="store_true",
        help="development: embedded engines for the stores without a URL (MongoDB in a child"
        " process, Redis and Qdrant in this one, data under MESHGATE_DATA_DIR); bootstrap a"
        " dev organization and ADMIN key on first run; allow the dev internal cert and"
        " webhooks to this machine",
    )
    boot = sub.add_parser(
        "bootstrap",
        help="create an organization and an ADMIN key",
        description="Create an organization and an ADMIN key in the MongoDB of\n"
        "MESHGATE_MONGODB_URI, and print the key's secret once.",
        epilog=_SETTINGS_NOTE,
        formatter_class=text,
    )
    boot.add_argument(
        "--name", default="default", help="the organization's name (default: %(default)s)"
    )
    boot.add_argument(
        "--plan",
        default="free",
        help="its plan, one of MESHGATE_PLANS_FILE's (default: %(default)s)",
    )
    boot.add_argument(
        "--environment",
        choices=ENVIRONMENTS,
        default="production",
        help="the environment of the ADMIN key (default: %(default)s)",
    )
    boot.add_argument(
        "--key-file", type=Path, help="write the secret to this file (mode 0600) instead of stdout"
    )
    boot.add_argument(
        "--another",
        action="store_true",
        help="add an organization although some exist (else refused, so a rerun creates none)",
    )
    boot.add_argument(
        "--dev",
        action="store_true",
        help="without MESHGATE_MONGODB_URI: the embedded engine of `serve --dev` (its data under"
        " MESHGATE_DATA_DIR), started for the while",
    )
    add_backup_commands(sub)
    add_audit_commands(sub)
    return parser


def _serve_settings(settings: Settings, args: argparse.Namespace) -> Settings:
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
    return settings


def _run(settings: Settings, args: argparse.Namespace) -> int:
    if args.command == "bootstrap":
        return asyncio.run(_bootstrap(settings, args))
    check_configuration(settings, dev=args.dev)
    try:
        configure_tracing()
    except RuntimeError as exc:
        raise SettingsError(str(exc)) from None
    if args.workers != 1:
        if not 1 <= args.workers <= 64:
            raise SettingsError("--workers must be between 1 and 64")
        return serve_workers(settings, args)
    return asyncio.run(serve(settings, dev=args.dev))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("backup", "restore"):  # clients of a running server: no settings
        return run_backup_command(args)
    if args.command == "audit":
        return run_audit_command(args)
    try:
        settings = Settings.from_env()
        if args.command == "serve":
            settings = _serve_settings(settings, args)
        configure_logging(settings.log_level)
        return _run(settings, args)
    except (SettingsError, EmbeddedEngineMissingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIGURATION
    except (EnvironmentFailure, EmbeddedEngineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ENVIRONMENT
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception:
        _LOG.critical("meshgate stopped on an unexpected error (a bug)", exc_info=True)
        return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())
