"""Credits for tests: an organization left with none this month."""

from __future__ import annotations

from meshgate.v1 import usage_service_pb2

from server.backends import Backends
from storage.core.clock import utc_now
from storage.metering.credits import CreditAccounts, period_of
from tests.support.clients import auth, raw_unary
from tests.support.tenants import Tenant

__all__ = ["exhaust_credits"]


async def exhaust_credits(tenant: Tenant, backends: Backends) -> None:
    """Leaves the organization no credits this month: its account is opened through the API,
    then emptied straight in Redis (test set-up, as tests/interceptors/test_rate_limit.py
    does). Its next paid call is refused CREDITS_EXHAUSTED, and crosses every threshold."""
    request = usage_service_pb2.GetCreditBalanceRequest()
    await raw_unary(tenant.channel, "/meshgate.v1.UsageService/GetCreditBalance")(
        request.SerializeToString(), metadata=auth(tenant.admin)
    )
    key = CreditAccounts.key(tenant.organization_id, period_of(utc_now()))
    await backends.redis.hset(key, mapping={"balance": 0, "allowance": 0})
