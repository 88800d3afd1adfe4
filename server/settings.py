"""One frozen settings object, read once from `MESHGATE_*` environment variables.

Every secret has a `*_FILE` variant (the way container secrets are mounted);
secrets are wrapped in `Secret`, whose repr is masked (server/secret_values.py reads
them); the readers of one plain variable are in server/env_values.py.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from interceptors.sidecar.bindings import SidecarBindings
from interceptors.sidecar.routes import RoutePolicies
from server.env_values import (
    SettingsError,
    boolean,
    choice,
    listed,
    listen_address,
    number,
    parse_durations,
    readable_file,
    watched_file,
    whole_number,
)
from server.method_policies import MethodPolicies
from server.secret_values import (
    Secret,
    audit_checkpoint_keys,
    check_mongodb_uri,
    key_list,
    mongodb_uri,
    page_token_keys,
    read_secret,
    sealing_key,
    sealing_key_list,
    sealing_keys,
)
from server.setting_groups import (
    DEFAULT_RETRY_SCHEDULE,
    allowed_hosts,
    backup_limits,
    checkpoint_sinks,
    collection_layout,
    retry_schedule,
    webhook_jitter,
)
from server.sidecar_files import ext_authz_bindings, load_method_policies, load_routes
from storage.core.checkpoints import CheckpointKeys
from storage.core.environments import ENVIRONMENTS
from storage.core.plans import Plan, PlanError, parse_plans
from storage.data.backup_limits import BackupLimits
from storage.data.vectors import CollectionLayout
from storage.metering.rate_limiter import FailureMode
from storage.tenancy.keys import MAX_KEYS_PER_ORGANIZATION
from storage.webhooks.sealing import DEFAULT_KEY_ID

__all__ = [
    "DEFAULT_PLANS_FILE",
    "DEFAULT_RETRY_SCHEDULE",
    "ENVIRONMENTS",
    "Secret",
    "Settings",
    "SettingsError",
    "check_mongodb_uri",
    "load_plans",
    "load_routes",
    "parse_durations",
]

DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.json")


def load_plans(path: Path) -> dict[str, Plan]:
    try:
        return parse_plans(json.loads(path.read_text()))
    except OSError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: {path} is not JSON: {exc}") from None
    except PlanError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    data_dir: Path = Path("var")
    tls_cert: Path = Path("certs/server.pem")
    tls_key: Path = Path("certs/server-key.pem")
    tls_client_ca: Path = Path("certs/ca.pem")
    insecure: bool = False
    mongodb_uri: Secret | None = None
    mongodb_database: str = "meshgate"
    # the files the two came from, if any: a new value in them switches connections
    mongodb_uri_file: Path | None = None
    redis_url_file: Path | None = None
    redis_url: Secret | None = None
    # MESHGATE_REDIS_URL names a node of a Redis Cluster
    redis_cluster: bool = False
    qdrant_url: str | None = None
    qdrant_api_key: Secret | None = None
    # shards, replicas and write consistency of each `ns_` collection (remote Qdrant only)
    qdrant_collections: CollectionLayout = field(default_factory=CollectionLayout)
    environments: frozenset[str] = frozenset(ENVIRONMENTS)
    internal_peers: frozenset[str] = frozenset()
    trusted_proxies: frozenset[str] = frozenset()
    key_cache_ttl_s: float = 10.0
    # keys an organization may hold that are not revoked (storage/tenancy/keys.py)
    max_keys_per_organization: int = MAX_KEYS_PER_ORGANIZATION
    # how often each replica applies the organizations' idle-key policies
    key_idle_check_s: float = 600.0
    shutdown_grace_s: float = 10.0
    # after SIGTERM, how long health says NOT_SERVING while calls are still served
    drain_delay_s: float = 5.0
    backend_timeout_s: float = 5.0
    # how long `serve` and `bootstrap` wait for unreachable stores at start-up (0: one try)
    startup_wait_s: float = 30.0
    # while a store stays unreachable, how often that is logged again
    store_down_log_s: float = 30.0
    max_message_bytes: int = 4 * 1024 * 1024
    # calls (streams included) in flight on one server; beyond, grpc refuses RESOURCE_EXHAUSTED
    max_concurrent_calls: int = 1000
    # client connections open at once on one server (beyond, closed as they are accepted),
    # and how long one with no call in flight is kept before grpc sends it GOAWAY
    max_connections: int = 2000
    connection_idle_s: float = 300.0
    log_level: str = "INFO"
    plans: Mapping[str, Plan] = field(default_factory=lambda: load_plans(DEFAULT_PLANS_FILE))
    default_plan: str = "free"
    rate_limit_on_redis_failure: FailureMode = FailureMode.LOCAL
    credits_fail_open: bool = False
    limiter_timeout_s: float = 0.2
    # rate-limit buckets one process keeps state for (leases, local fallback buckets, names);
    # the least recently used beyond it are forgotten (docs/limits.md#rate-limits)
    rate_limit_max_buckets: int = 10_000
    metrics_listen: str | None = "127.0.0.1:9464"
    health_interval_s: float = 2.0
    # ingestion tasks and webhooks
    task_workers: int = 2
    task_lease_s: float = 30.0
    task_max_attempts: int = 5
    work_poll_s: float = 1.0
    webhook_workers: int = 4
    webhook_retry_schedule: tuple[float, ...] = field(
        default_factory=lambda: parse_durations(DEFAULT_RETRY_SCHEDULE)
    )
    webhook_jitter: float = 0.2
    webhook_timeout_s: float = 10.0
    webhook_max_response_bytes: int = 64 * 1024
    webhook_allowed_hosts: frozenset[str] = frozenset()
    webhook_secret_key: Secret | None = None
    # sealing keys by id, the primary first (`kid:base64,...`); wins over webhook_secret_key
    webhook_secret_keys: Secret | None = None
    webhook_ca_file: Path | None = None
    # page token HMAC keys, the signing key first; None: one shared key kept in MongoDB
    page_token_keys: Secret | None = None
    # audit checkpoint note keys, the signing key first; None: no checkpoints are signed
    audit_checkpoint_keys: Secret | None = None
    audit_checkpoint_interval_s: float = 60.0
    # where checkpoints are published: "log", "file:<directory>"
    audit_checkpoint_sinks: tuple[str, ...] = ("log",)
    # a second port of the same server (same mTLS, same services) for the sidecars' questions,
    # for meshes that must reach meshgate on a port they do not intercept; None: none
    sidecar_listen: str | None = None
    # who may ask ext_authz Check and ShouldRateLimit (the sidecars' mTLS identities)
    ext_authz_peers: frozenset[str] = frozenset()
    # whom each of them may speak for: organizations and source principals (none: nobody)
    ext_authz_bindings: SidecarBindings = field(default_factory=SidecarBindings)
    # the routes ext_authz Check judges (none: every Check is denied)
    routes: RoutePolicies = field(default_factory=RoutePolicies)
    # narrower policies of meshgate's methods, enforced or in dry run (none: the protos')
    method_policies: MethodPolicies = field(default_factory=MethodPolicies)
    # the files the three came from, if any: watched, a valid new content applied
    # (server/policy_files.py)
    route_policy_file: Path | None = None
    ext_authz_bindings_file: Path | None = None
    method_policy_file: Path | None = None
    # an allowed Check removes the client's authorization header before the upstream
    ext_authz_remove_authorization: bool = True
    # namespace export and import: bytes, items, time, slots, the spool directory
    backups: BackupLimits = field(default_factory=BackupLimits)

    def webhook_sealing_key(self) -> bytes | None:
        """The primary sealing key."""
        keys = self.webhook_sealing_keys()
        return keys[0][1] if keys else None

    def webhook_sealing_keys(self) -> tuple[tuple[str, bytes], ...]:
        """(key id, key) pairs, the primary first; MESHGATE_WEBHOOK_SECRET_KEY alone is the
        key `default`; empty: secrets are stored unencrypted."""
        if self.webhook_secret_keys is not None:
            return sealing_key_list(self.webhook_secret_keys.reveal())
        if self.webhook_secret_key is None:
            return ()
        return ((DEFAULT_KEY_ID, base64.b64decode(self.webhook_secret_key.reveal())),)

    def checkpoint_keys(self) -> CheckpointKeys | None:
        if self.audit_checkpoint_keys is None:
            return None
        return CheckpointKeys.parse(self.audit_checkpoint_keys.reveal())

    def page_token_key_list(self) -> tuple[bytes, ...] | None:
        return None if self.page_token_keys is None else key_list(self.page_token_keys)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environments = listed(env, "MESHGATE_ENVIRONMENTS", ",".join(ENVIRONMENTS))
        unknown = environments - set(ENVIRONMENTS)
        if unknown or not environments:
            raise SettingsError(
                f"MESHGATE_ENVIRONMENTS must list some of {', '.join(ENVIRONMENTS)}"
            )
        log_level = env.get("MESHGATE_LOG_LEVEL", "INFO").upper()
        if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise SettingsError("MESHGATE_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        plans = load_plans(Path(env.get("MESHGATE_PLANS_FILE") or DEFAULT_PLANS_FILE))
        default_plan = env.get("MESHGATE_DEFAULT_PLAN", "free")
        if default_plan not in plans:
            raise SettingsError(f"MESHGATE_DEFAULT_PLAN {default_plan!r} is not one of the plans")
        redis_url = read_secret(env, "MESHGATE_REDIS_URL")
        redis_cluster = boolean(env, "MESHGATE_REDIS_CLUSTER")
        if redis_cluster and redis_url is None:
            raise SettingsError(
                "MESHGATE_REDIS_CLUSTER needs MESHGATE_REDIS_URL (a node of the cluster):"
                " the embedded Redis is a single node"
            )
        listen = env.get("MESHGATE_LISTEN", "127.0.0.1:50051")
        if ":" not in listen:
            raise SettingsError(f"MESHGATE_LISTEN must be host:port, got {listen!r}")
        return cls(
            listen=listen,
            data_dir=Path(env.get("MESHGATE_DATA_DIR", "var")),
            tls_cert=Path(env.get("MESHGATE_TLS_CERT", "certs/server.pem")),
            tls_key=Path(env.get("MESHGATE_TLS_KEY", "certs/server-key.pem")),
            tls_client_ca=Path(env.get("MESHGATE_TLS_CLIENT_CA", "certs/ca.pem")),
            insecure=boolean(env, "MESHGATE_INSECURE"),
            mongodb_uri=mongodb_uri(env),
            mongodb_uri_file=watched_file(env, "MESHGATE_MONGODB_URI_FILE"),
            redis_url_file=watched_file(env, "MESHGATE_REDIS_URL_FILE"),
            mongodb_database=env.get("MESHGATE_MONGODB_DATABASE", "meshgate"),
            redis_url=redis_url,
            redis_cluster=redis_cluster,
            qdrant_url=env.get("MESHGATE_QDRANT_URL") or None,
            qdrant_api_key=read_secret(env, "MESHGATE_QDRANT_API_KEY"),
            qdrant_collections=collection_layout(env),
            environments=environments,
            internal_peers=listed(env, "MESHGATE_INTERNAL_PEERS"),
            trusted_proxies=listed(env, "MESHGATE_TRUSTED_PROXIES"),
            key_cache_ttl_s=number(env, "MESHGATE_KEY_CACHE_TTL_S", 10.0, minimum=0),
            max_keys_per_organization=whole_number(
                env,
                "MESHGATE_MAX_KEYS_PER_ORGANIZATION",
                MAX_KEYS_PER_ORGANIZATION,
                minimum=1,
                maximum=1_000_000,
            ),
            key_idle_check_s=number(env, "MESHGATE_KEY_IDLE_CHECK_S", 600.0, minimum=10),
            shutdown_grace_s=number(env, "MESHGATE_SHUTDOWN_GRACE_S", 10.0, minimum=0),
            drain_delay_s=number(env, "MESHGATE_DRAIN_DELAY_S", 5.0, minimum=0),
            backend_timeout_s=number(env, "MESHGATE_BACKEND_TIMEOUT_S", 5.0, minimum=0.1),
            startup_wait_s=number(env, "MESHGATE_STARTUP_WAIT_S", 30.0, minimum=0),
            store_down_log_s=number(env, "MESHGATE_STORE_DOWN_LOG_S", 30.0, minimum=0.1),
            max_message_bytes=int(
                number(env, "MESHGATE_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024)
            ),
            max_concurrent_calls=whole_number(
                env, "MESHGATE_MAX_CONCURRENT_CALLS", 1000, minimum=10, maximum=1_000_000
            ),
            max_connections=whole_number(
                env, "MESHGATE_MAX_CONNECTIONS", 2000, minimum=10, maximum=1_000_000
            ),
            connection_idle_s=number(env, "MESHGATE_CONNECTION_IDLE_S", 300.0, minimum=1.0),
            log_level=log_level,
            plans=plans,
            default_plan=default_plan,
            rate_limit_on_redis_failure=FailureMode(
                choice(
                    env,
                    "MESHGATE_RATE_LIMIT_ON_REDIS_FAILURE",
                    "local",
                    ("local", "open", "closed"),
                )
            ),
            credits_fail_open=choice(
                env, "MESHGATE_CREDITS_ON_REDIS_FAILURE", "closed", ("closed", "open")
            )
            == "open",
            limiter_timeout_s=number(env, "MESHGATE_LIMITER_TIMEOUT_S", 0.2, minimum=0.01),
            rate_limit_max_buckets=whole_number(
                env, "MESHGATE_RATE_LIMIT_MAX_BUCKETS", 10_000, minimum=100, maximum=10_000_000
            ),
            metrics_listen=listen_address(env, "MESHGATE_METRICS_LISTEN", "127.0.0.1:9464"),
            health_interval_s=number(env, "MESHGATE_HEALTH_INTERVAL_S", 2.0, minimum=0.1),
            task_workers=whole_number(env, "MESHGATE_TASK_WORKERS", 2, minimum=0, maximum=64),
            task_lease_s=number(env, "MESHGATE_TASK_LEASE_S", 30.0, minimum=0.5),
            task_max_attempts=whole_number(
                env, "MESHGATE_TASK_MAX_ATTEMPTS", 5, minimum=1, maximum=100
            ),
            work_poll_s=number(env, "MESHGATE_WORK_POLL_S", 1.0, minimum=0.05),
            webhook_workers=whole_number(
                env, "MESHGATE_WEBHOOK_WORKERS", 4, minimum=0, maximum=256
            ),
            webhook_retry_schedule=retry_schedule(env),
            webhook_jitter=webhook_jitter(env),
            webhook_timeout_s=number(env, "MESHGATE_WEBHOOK_TIMEOUT_S", 10.0, minimum=0.1),
            webhook_max_response_bytes=whole_number(
                env, "MESHGATE_WEBHOOK_MAX_RESPONSE_BYTES", 64 * 1024, minimum=0, maximum=2**24
            ),
            webhook_allowed_hosts=allowed_hosts(env),
            webhook_secret_key=sealing_key(env),
            webhook_secret_keys=sealing_keys(env),
            webhook_ca_file=readable_file(env, "MESHGATE_WEBHOOK_CA_FILE"),
            page_token_keys=page_token_keys(env),
            audit_checkpoint_keys=audit_checkpoint_keys(env),
            audit_checkpoint_interval_s=number(
                env, "MESHGATE_AUDIT_CHECKPOINT_INTERVAL_S", 60.0, minimum=1.0
            ),
            audit_checkpoint_sinks=checkpoint_sinks(env),
            sidecar_listen=listen_address(env, "MESHGATE_SIDECAR_LISTEN", "off"),
            ext_authz_peers=listed(env, "MESHGATE_EXT_AUTHZ_PEERS"),
            ext_authz_bindings=ext_authz_bindings(env, listed(env, "MESHGATE_EXT_AUTHZ_PEERS")),
            routes=(
                load_routes(Path(env["MESHGATE_ROUTE_POLICY_FILE"]))
                if env.get("MESHGATE_ROUTE_POLICY_FILE")
                else RoutePolicies()
            ),
            method_policies=(
                load_method_policies(Path(env["MESHGATE_METHOD_POLICY_FILE"]))
                if env.get("MESHGATE_METHOD_POLICY_FILE")
                else MethodPolicies()
            ),
            route_policy_file=watched_file(env, "MESHGATE_ROUTE_POLICY_FILE"),
            ext_authz_bindings_file=watched_file(env, "MESHGATE_EXT_AUTHZ_BINDINGS_FILE"),
            method_policy_file=watched_file(env, "MESHGATE_METHOD_POLICY_FILE"),
            ext_authz_remove_authorization=not boolean(
                env, "MESHGATE_EXT_AUTHZ_KEEP_AUTHORIZATION"
            ),
            backups=backup_limits(env),
        )
