"""The credit step's accounts: `CreditAccounts` (Redis, the MongoDB ledger) and
`FakeCreditAccounts`: debits never add up to more than the allowance, a refund is
available again, a spent debit is not, and every month has an account of its own."""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator

import pytest

from server.backends import Backends
from storage.core.errors import ResourceExhaustedError
from storage.metering.credit_events import CreditEvents
from storage.metering.credits import CreditAccounts
from storage.metering.ledger import MongoLedger
from tests.support.fakes import FakeCreditAccounts
from tests.support.metering import new_organization_id
from tests.support.unit_tier import FAKE_AND_REAL

Accounts = CreditAccounts | FakeCreditAccounts
A_MONTH_AGO = time.time() - 32 * 86400


@pytest.fixture(params=FAKE_AND_REAL)
async def accounts(request: pytest.FixtureRequest) -> AsyncIterator[Accounts]:
    if request.param == "fake":
        yield FakeCreditAccounts()
        return
    backends: Backends = request.getfixturevalue("backends")
    real = CreditAccounts(
        redis=backends.redis,
        replica="contract-" + secrets.token_hex(4),
        ledger=MongoLedger(mongo=backends.mongo, events=CreditEvents(mongo=backends.mongo)),
    )
    yield real
    await real.drain()


async def debit(
    accounts: Accounts, organization_id: str, cost: int, *, allowance: int, at: float | None = None
) -> None:
    """What the credits step does: from what is at hand, else waiting for the account."""
    if not accounts.try_debit(organization_id, cost, at=at):
        await accounts.debit(organization_id, cost, allowance=allowance, at=at)


async def test_debits_stop_at_the_allowance(accounts: Accounts) -> None:
    organization = new_organization_id()
    for _ in range(5):
        await debit(accounts, organization, 10, allowance=50)
    with pytest.raises(ResourceExhaustedError, match="used up") as refused:
        await debit(accounts, organization, 10, allowance=50)
    assert (refused.value.retry_after_s or 0) >= 1.0
    for _ in range(5):
        accounts.complete(organization, 10, refund=False)


async def test_a_refund_is_available_again_and_a_spent_debit_is_not(accounts: Accounts) -> None:
    organization = new_organization_id()
    await debit(accounts, organization, 10, allowance=20)
    await debit(accounts, organization, 10, allowance=20)
    accounts.complete(organization, 10, refund=True)
    await debit(accounts, organization, 10, allowance=20)
    accounts.complete(organization, 10, refund=False)
    accounts.complete(organization, 10, refund=False)
    with pytest.raises(ResourceExhaustedError):
        await debit(accounts, organization, 10, allowance=20)


async def test_a_debit_belongs_to_the_month_its_call_started_in(accounts: Accounts) -> None:
    organization = new_organization_id()
    await debit(accounts, organization, 10, allowance=10)
    await debit(accounts, organization, 10, allowance=10, at=A_MONTH_AGO)
    with pytest.raises(ResourceExhaustedError):
        await debit(accounts, organization, 1, allowance=10, at=A_MONTH_AGO)
    accounts.complete(organization, 10, refund=False, at=A_MONTH_AGO)
    accounts.complete(organization, 10, refund=False)
