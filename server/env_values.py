"""Reading one setting from the environment: numbers, choices, lists, durations, files
and addresses, each refused with SettingsError naming the variable and what it must be.
server/settings.py builds the Settings from these."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = [
    "SettingsError",
    "boolean",
    "choice",
    "listed",
    "listen_address",
    "number",
    "optional_int",
    "parse_durations",
    "parsed",
    "readable_file",
    "watched_file",
    "whole_number",
]

UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it."""


def watched_file(env: Mapping[str, str], name: str) -> Path | None:
    """The file a secret came from, when it came from one: watched for rotations
    (server/credentials.py)."""
    raw = env.get(name)
    return Path(raw) if raw else None


def listed(env: Mapping[str, str], name: str, default: str = "") -> frozenset[str]:
    return frozenset(p.strip() for p in env.get(name, default).split(",") if p.strip())


def optional_int(env: Mapping[str, str], name: str, *, maximum: int) -> int | None:
    """A whole number from 1 to `maximum`, or None when unset."""
    value = parsed(env, name, int, expected="a whole number")
    if value is not None and not 1 <= value <= maximum:
        raise SettingsError(f"{name} must be between 1 and {maximum}, got {env[name]!r}")
    return value


def parsed[T](
    env: Mapping[str, str], name: str, parse: Callable[[str], T], *, expected: str
) -> T | None:
    """The setting parsed (None when unset or empty); `expected` names what it must be."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return parse(raw)
    except ValueError:
        raise SettingsError(f"{name} must be {expected}, got {raw!r}") from None


def number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    value = parsed(env, name, float, expected="a number")
    if value is None:
        return default
    if not math.isfinite(value) or value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {env[name]!r}")
    return value


def choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, default).strip().lower() or default
    if value not in choices:
        raise SettingsError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def listen_address(env: Mapping[str, str], name: str, default: str) -> str | None:
    value = env.get(name, default).strip()
    if value.lower() in ("off", "none", ""):
        return None
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise SettingsError(f"{name} must be host:port or off, got {value!r}")
    return value


def whole_number(
    env: Mapping[str, str], name: str, default: int, *, minimum: int, maximum: int
) -> int:
    value = parsed(env, name, int, expected="a whole number")
    if value is None:
        return default
    if not minimum <= value <= maximum:
        raise SettingsError(f"{name} must be between {minimum} and {maximum}, got {env[name]!r}")
    return value


def parse_durations(value: str) -> tuple[float, ...]:
    """`5s,5m,30m,2h` -> seconds. Units: ms, s, m, h, d."""
    out: list[float] = []
    for raw in value.split(","):
        part = raw.strip().lower()
        unit = next((u for u in ("ms", "s", "m", "h", "d") if part.endswith(u)), None)
        if unit is None:
            raise ValueError(f"{raw.strip()!r} needs a unit (ms, s, m, h or d)")
        try:
            number = float(part[: -len(unit)])
        except ValueError:
            raise ValueError(f"{raw.strip()!r} is not a duration") from None
        if not 0 < number < float("inf"):
            raise ValueError(f"{raw.strip()!r} must be positive")
        out.append(number * UNITS[unit])
    return tuple(out)


def readable_file(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name)
    if not raw:
        return None
    path = Path(raw)
    if not path.is_file():
        raise SettingsError(f"{name}: {raw} is not a readable file")
    return path


def boolean(env: Mapping[str, str], name: str) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name} must be true or false, got {raw!r}")
