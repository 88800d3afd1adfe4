"""In-memory stores for the unit tier (tests/unit/): each implements the protocol the code
under test takes, and tests/contracts/ runs it and the real store through the same cases,
so the two cannot drift apart. They keep state and answer as the store does; none merely
records calls.

- keys.FakeKeyRecords: the key verifier's store (`KeyRecords`: find_by_digest, touch)
- tenancy.FakeOrganizations: what the identity step reads (`Organizations`: cached, get)
- tenancy.FakeNamespaces: what the namespace step reads (`Namespaces`: cached, resolve)
- lease_redis.FakeLeaseRedis: the rate limiter's Redis (`ScriptHost`: the lease script)
- credits.FakeCreditAccounts: the credits step's and usage observer's accounts
  (`CreditDebits`, `CreditCompletions`: try_debit, debit, complete)
- usage.FakeUsage: the usage observer's ledger (`UsageCounts`: record; flush, query)
- audit.FakeAuditLog: the audit step's queue (`AuditQueue`: check_room, record; flush,
  list_page, verify)
- documents.stored: a document as MongoDB gives it back (what the fakes keep)
"""

from tests.support.fakes.audit import FakeAuditLog
from tests.support.fakes.credits import FakeCreditAccounts
from tests.support.fakes.keys import FakeKeyRecords
from tests.support.fakes.lease_redis import FakeLeaseRedis
from tests.support.fakes.tenancy import FakeNamespaces, FakeOrganizations
from tests.support.fakes.usage import FakeUsage

__all__ = [
    "FakeAuditLog",
    "FakeCreditAccounts",
    "FakeKeyRecords",
    "FakeLeaseRedis",
    "FakeNamespaces",
    "FakeOrganizations",
    "FakeUsage",
]
