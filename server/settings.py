"""One frozen settings object, read once from `MESHGATE_*` environment variables.

Every secret has a `*_FILE` variant (the way container secrets are mounted);
secrets are wrapped in `Secret`, whose repr is masked.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from storage.plans import Plan, PlanError, parse_plans
from storage.rate_limiter import FailureMode

__all__ = [
    "DEFAULT_PLANS_FILE",
    "ENVIRONMENTS",
    "Secret",
    "Settings",
    "SettingsError",
    "load_plans",
]

ENVIRONMENTS = ("development", "staging", "production")
DEFAULT_PLANS_FILE = Path(__file__).with_name("plans.json")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


@dataclass(frozen=True, slots=True)
class Secret:
    _value: str = field(repr=False)

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('****')"

    def __str__(self) -> str:
        return "****"


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    path = env.get(f"{name}_FILE")
    if path:
        try:
            return Secret(Path(path).read_text().strip())
        except OSError as exc:
            raise SettingsError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from None
    value = env.get(name)
    return Secret(value) if value else None


def _list(env: Mapping[str, str], name: str, default: str = "") -> frozenset[str]:
    return frozenset(p.strip() for p in env.get(name, default).split(",") if p.strip())


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def load_plans(path: Path) -> dict[str, Plan]:
    try:
        return parse_plans(json.loads(path.read_text()))
    except OSError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: {path} is not JSON: {exc}") from None
    except PlanError as exc:
        raise SettingsError(f"MESHGATE_PLANS_FILE: {path}: {exc}") from None


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _listen(env: Mapping[str, str], name: str, default: str) -> str | None:
    value = env.get(name, default).strip()
    if value.lower() in ("off", "none", ""):
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port or off, got {value!r}")
    return value


def _bool(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")


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
    redis_url: Secret | None = None
    qdrant_url: str | None = None
    qdrant_api_key: Secret | None = None
    environments: frozenset[str] = frozenset(ENVIRONMENTS)
    internal_peers: frozenset[str] = frozenset()
    trusted_proxies: frozenset[str] = frozenset()
    key_cache_ttl_s: float = 10.0
    shutdown_grace_s: float = 10.0
    backend_timeout_s: float = 5.0
    max_message_bytes: int = 4 * 1024 * 1024
    log_level: str = "INFO"
    plans: Mapping[str, Plan] = field(default_factory=lambda: load_plans(DEFAULT_PLANS_FILE))
    default_plan: str = "free"
    rate_limit_on_redis_failure: FailureMode = FailureMode.LOCAL
    credits_fail_open: bool = False
    limiter_timeout_s: float = 0.2
    metrics_listen: str | None = "127.0.0.1:9464"
    health_interval_s: float = 2.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        environments = _list(env, "MESHGATE_ENVIRONMENTS", ",".join(ENVIRONMENTS))
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
        listen = env.get("MESHGATE_LISTEN", "127.0.0.1:50051")
        if ":" not in listen:
            raise SettingsError(f"MESHGATE_LISTEN must be host:port, got {listen!r}")
        return cls(
            listen=listen,
            data_dir=Path(env.get("MESHGATE_DATA_DIR", "var")),
            tls_cert=Path(env.get("MESHGATE_TLS_CERT", "certs/server.pem")),
            tls_key=Path(env.get("MESHGATE_TLS_KEY", "certs/server-key.pem")),
            tls_client_ca=Path(env.get("MESHGATE_TLS_CLIENT_CA", "certs/ca.pem")),
            insecure=_bool(env, "MESHGATE_INSECURE"),
            mongodb_uri=_secret(env, "MESHGATE_MONGODB_URI"),
            mongodb_database=env.get("MESHGATE_MONGODB_DATABASE", "meshgate"),
            redis_url=_secret(env, "MESHGATE_REDIS_URL"),
            qdrant_url=env.get("MESHGATE_QDRANT_URL") or None,
            qdrant_api_key=_secret(env, "MESHGATE_QDRANT_API_KEY"),
            environments=environments,
            internal_peers=_list(env, "MESHGATE_INTERNAL_PEERS"),
            trusted_proxies=_list(env, "MESHGATE_TRUSTED_PROXIES"),
            key_cache_ttl_s=_number(env, "MESHGATE_KEY_CACHE_TTL_S", 10.0, minimum=0),
            shutdown_grace_s=_number(env, "MESHGATE_SHUTDOWN_GRACE_S", 10.0, minimum=0),
            backend_timeout_s=_number(env, "MESHGATE_BACKEND_TIMEOUT_S", 5.0, minimum=0.1),
            max_message_bytes=int(
                _number(env, "MESHGATE_MAX_MESSAGE_BYTES", 4 * 1024 * 1024, minimum=1024)
            ),
            log_level=log_level,
            plans=plans,
            default_plan=default_plan,
            rate_limit_on_redis_failure=FailureMode(
                _choice(
                    env,
                    "MESHGATE_RATE_LIMIT_ON_REDIS_FAILURE",
                    "local",
                    ("local", "open", "closed"),
                )
            ),
            credits_fail_open=_choice(
                env, "MESHGATE_CREDITS_ON_REDIS_FAILURE", "closed", ("closed", "open")
            )
            == "open",
            limiter_timeout_s=_number(env, "MESHGATE_LIMITER_TIMEOUT_S", 0.2, minimum=0.01),
            metrics_listen=_listen(env, "MESHGATE_METRICS_LISTEN", "127.0.0.1:9464"),
            health_interval_s=_number(env, "MESHGATE_HEALTH_INTERVAL_S", 2.0, minimum=0.1),
        )
