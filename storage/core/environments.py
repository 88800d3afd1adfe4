"""The deployment environments, defined once.

Keys and namespaces each belong to one environment; a key's secret shows it
as a short token (`mg_<token>_...`). Settings (`MESHGATE_ENVIRONMENTS`), the
proto enum (`meshgate.v1.Environment`, `ENVIRONMENT_<NAME>`) and key secrets
all read this table.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

__all__ = ["ENVIRONMENTS", "SECRET_TOKENS"]

# environment name (as stored and configured) -> its token in key secrets
SECRET_TOKENS: Mapping[str, str] = MappingProxyType(
    {"development": "dev", "staging": "stg", "production": "prod"}
)
ENVIRONMENTS: tuple[str, ...] = tuple(SECRET_TOKENS)
