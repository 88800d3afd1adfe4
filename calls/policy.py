"""Method policies as the interceptors see them (built from the protos by `server/policies.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Access", "Policy"]


class Access(StrEnum):
    API_KEY = "api_key"
    INTERNAL_PEER = "internal_peer"
    PUBLIC = "public"
    # the sidecar-facing services (ext_authz Check, ShouldRateLimit): trusted proxies only
    SIDECAR = "sidecar"


@dataclass(frozen=True, slots=True)
class Policy:
    access: Access
    permission: str | None = None  # read | write | delete | admin
    namespaced: bool = False
    cost: int = 0
    rate_class: str = "metadata"
    audit: bool = False
    # a List method (page_token in, next_page_token out): its tokens are bound to the call
    paged: bool = False
