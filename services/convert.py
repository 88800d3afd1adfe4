"""Conversions between protos and domain values, and request validation helpers."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from meshgate.v1 import common_pb2, options_pb2

from storage.core.environments import ENVIRONMENTS
from storage.core.errors import InvalidArgumentError
from storage.core.ids import ORGANIZATION_ID_RE

__all__ = [
    "PERMISSION_NAMES",
    "checked_organization_id",
    "dict_to_struct",
    "duration",
    "environment_from_proto",
    "environment_to_proto",
    "names_from_proto",
    "permission_to_proto",
    "permissions_from_proto",
    "struct_to_dict",
    "timestamp",
    "validate_name",
]

# each environment is ENVIRONMENT_<NAME> in the proto enum
_ENVIRONMENT_ENUM_NAMES = {name: f"ENVIRONMENT_{name.upper()}" for name in ENVIRONMENTS}
_ENVIRONMENTS_BACK = {
    name: common_pb2.Environment.Value(enum_name)
    for name, enum_name in _ENVIRONMENT_ENUM_NAMES.items()
}
_ENVIRONMENTS = {value: name for name, value in _ENVIRONMENTS_BACK.items()}
*_FIRST, _LAST = _ENVIRONMENT_ENUM_NAMES.values()
_ENVIRONMENT_REFUSAL = f"environment must be {', '.join(_FIRST)} or {_LAST}"
PERMISSION_NAMES = {
    options_pb2.PERMISSION_READ: "read",
    options_pb2.PERMISSION_WRITE: "write",
    options_pb2.PERMISSION_DELETE: "delete",
    options_pb2.PERMISSION_ADMIN: "admin",
}
_PERMISSION_VALUES = {v: k for k, v in PERMISSION_NAMES.items()}
MAX_NAME = 64


def environment_from_proto(value: int) -> str:
    try:
        return _ENVIRONMENTS[value]  # type: ignore[index]
    except KeyError:
        raise InvalidArgumentError(_ENVIRONMENT_REFUSAL, field="environment") from None


def environment_to_proto(value: str) -> common_pb2.Environment.ValueType:
    return _ENVIRONMENTS_BACK[value]


def names_from_proto(
    values: Iterable[int], names: Mapping[Any, str], *, refusal: str, field: str
) -> frozenset[str]:
    """Enum values to their names; INVALID_ARGUMENT (`refusal`, about `field`) for any
    other value."""
    out = set()
    for value in values:
        name = names.get(value)
        if name is None:
            raise InvalidArgumentError(refusal, field=field)
        out.add(name)
    return frozenset(out)


def permissions_from_proto(values: list[int]) -> frozenset[str]:
    if not values:
        raise InvalidArgumentError(
            "permissions must name at least one permission", field="permissions"
        )
    return names_from_proto(
        values,
        PERMISSION_NAMES,
        field="permissions",
        refusal="permissions must be PERMISSION_READ, PERMISSION_WRITE, PERMISSION_DELETE"
        " or PERMISSION_ADMIN",
    )


def checked_organization_id(value: str) -> str:
    if not ORGANIZATION_ID_RE.match(value):
        raise InvalidArgumentError(
            "organization_id is malformed (expected org_...)", field="organization_id"
        )
    return value


def duration(value: Duration) -> timedelta:
    return timedelta(seconds=value.seconds, microseconds=value.nanos // 1000)


def permission_to_proto(value: str) -> options_pb2.Permission.ValueType:
    return _PERMISSION_VALUES[value]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(value: datetime | None) -> Timestamp | None:
    if value is None:
        return None
    if value.tzinfo is None:  # naive means local time, as datetime.astimezone reads it
        value = value.astimezone(UTC)
    since = value - _EPOCH  # exact integer arithmetic (Timestamp.FromDatetime is 6x slower)
    return Timestamp(seconds=since.days * 86400 + since.seconds, nanos=since.microseconds * 1000)


def from_timestamp(value: Timestamp) -> datetime:
    return value.ToDatetime(tzinfo=UTC)


def validate_name(value: str, *, field: str) -> str:
    name = value.strip()
    if not name or len(name) > MAX_NAME or not name.isprintable():
        raise InvalidArgumentError(
            f"{field} must be 1-{MAX_NAME} printable characters", field=field
        )
    return name


def struct_to_dict(value: Struct) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(value)
    except ValueError:  # NaN or infinity: JSON has no such number
        raise InvalidArgumentError(
            "numbers must be finite (NaN and infinity are refused)"
        ) from None


def dict_to_struct(value: dict[str, Any]) -> Struct:
    out = Struct()
    out.update(value)
    return out
