"""The Lua scripts behind credits, and what their replies mean.

One hash per organization and period, `mg:{org_…}:credits:<YYYY-MM>`:

- `allowance`, `granted`, `balance`, `used`, `reserved`: the account, with
  `allowance + granted == balance + reserved + used` at every moment;
- `res:<replica>`: what one replica holds of `reserved` (spent or not);
- `ack:<writer>` and `part:<writer>`: the last ledger batch of a usage writer
  whose credits are in `used`, and how many credits of that batch are;
- `g:<grant id>`: a grant already added;
- `short`: when (Redis time, ms) a reservation was last refused for want of
  credits, so replicas holding some hand them back.

Beside it, a sorted set `…:live` scores each replica by the last time it ran
a script on this account; a replica silent for `dead_ms` holds nothing any
more (its reservation is reclaimed when credits run short).

Every script but the rebuild answers MISSING when the hash does not exist
(never created, expired, or lost with Redis's data): the caller then rebuilds
it from the ledger (`rebuild`, create-if-absent, so two replicas rebuilding at
once count once) and runs the script again. Nothing is granted from a hash
that was not rebuilt from the ledger.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from storage.backends.redis_client import RedisClient

__all__ = [
    "MISSING",
    "PERIOD_TTL_MS",
    "AccountState",
    "CreditScripts",
    "ReserveReply",
    "SettleReply",
]

MISSING = -1
# an account outlives its month long enough to be read back after it
PERIOD_TTL_MS = 70 * 24 * 3600 * 1000

_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""
_LIVE = f"""
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('PEXPIRE', KEYS[2], {PERIOD_TTL_MS})
local mine = tonumber(redis.call('HGET', KEYS[1], 'res:' .. ARGV[1]) or '0')
"""
_STATE_FIELDS = "'allowance', 'granted', 'balance', 'used', 'reserved'"
_MISSING = "if redis.call('EXISTS', KEYS[1]) == 0 then return {-1} end\n"

# ARGV: replica, need, demand, want, share, dead_ms
_RESERVE = (
    _MISSING
    + _CLOCK
    + _LIVE
    + """
local need, demand, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
if balance < need then
  -- replicas that stopped running scripts (killed, cut off) hold nothing any more
  for _, gone in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[6]))) do
    local held = tonumber(redis.call('HGET', KEYS[1], 'res:' .. gone) or '0')
    if held > 0 then
      redis.call('HINCRBY', KEYS[1], 'balance', held)
      redis.call('HINCRBY', KEYS[1], 'reserved', -held)
    end
    redis.call('HDEL', KEYS[1], 'res:' .. gone)
    redis.call('ZREM', KEYS[2], gone)
  end
  balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
end
local grant = 0
if balance >= need and balance > 0 then
  local cap = math.max(need, math.floor(balance / tonumber(ARGV[5])))
  grant = math.min(balance, math.max(demand, math.min(want, cap)))
elseif need > 0 then
  redis.call('HSET', KEYS[1], 'short', now)
end
if grant > 0 then
  redis.call('HINCRBY', KEYS[1], 'balance', -grant)
  redis.call('HINCRBY', KEYS[1], 'reserved', grant)
  mine = redis.call('HINCRBY', KEYS[1], 'res:' .. ARGV[1], grant)
end
local s = redis.call('HMGET', KEYS[1], """
    + _STATE_FIELDS
    + """)
return {grant, mine, s[1], s[2], s[3], s[4], s[5]}
"""
)

# ARGV: replica, release_all (0/1), unspent, held (running and spent calls, not in
# the chunks), reconcile (0/1), short_window_ms, n, then n times: writer, batch, credits
_SETTLE = (
    _MISSING
    + _CLOCK
    + _LIVE
    + """
local used = 0
local n = tonumber(ARGV[7])
for i = 0, n - 1 do
  local writer = ARGV[8 + 3 * i]
  local batch, credits = tonumber(ARGV[9 + 3 * i]), tonumber(ARGV[10 + 3 * i])
  local ack = tonumber(redis.call('HGET', KEYS[1], 'ack:' .. writer) or '0')
  if batch == ack then  -- partly (rebuild) or wholly (a settle whose reply was lost) counted
    local part = tonumber(redis.call('HGET', KEYS[1], 'part:' .. writer) or '0')
    local fresh = math.max(0, credits - part)
    redis.call('HSET', KEYS[1], 'part:' .. writer, part + fresh)
    used = used + fresh
  elseif batch > ack then
    redis.call('HSET', KEYS[1], 'ack:' .. writer, batch, 'part:' .. writer, credits)
    used = used + credits
  end
end
-- spent credits come out of this replica's reservation; beyond it (lost with Redis's
-- data, or reclaimed) they are debited from the balance now
local covered = math.min(used, mine)
mine = mine - covered
redis.call('HINCRBY', KEYS[1], 'used', used)
redis.call('HINCRBY', KEYS[1], 'reserved', 0 - covered)
redis.call('HINCRBY', KEYS[1], 'balance', covered - used)
local unspent = tonumber(ARGV[3])
local balance = tonumber(redis.call('HGET', KEYS[1], 'balance'))
local short = tonumber(redis.call('HGET', KEYS[1], 'short') or '0')
local release = 0
if ARGV[2] == '1' or balance < unspent or now - short < tonumber(ARGV[6]) then
  release = unspent
end
local surplus = 0
local expected = tonumber(ARGV[4]) + unspent - release
if ARGV[5] == '1' and mine > expected then
  surplus = mine - expected  -- granted, but the reply never reached the replica
end
local back = math.min(release + surplus, mine)
mine = mine - back
redis.call('HINCRBY', KEYS[1], 'reserved', 0 - back)
redis.call('HINCRBY', KEYS[1], 'balance', back)
if mine > 0 then
  redis.call('HSET', KEYS[1], 'res:' .. ARGV[1], mine)
else
  redis.call('HDEL', KEYS[1], 'res:' .. ARGV[1])
end
local s = redis.call('HMGET', KEYS[1], """
    + _STATE_FIELDS
    + """)
return {release, mine, s[1], s[2], s[3], s[4], s[5]}
"""
)

# ARGV: amount, grant id
_GRANT = (
    _MISSING
    + """
if redis.call('HSETNX', KEYS[1], 'g:' .. ARGV[2], 1) == 1 then
  redis.call('HINCRBY', KEYS[1], 'granted', ARGV[1])
  redis.call('HINCRBY', KEYS[1], 'balance', ARGV[1])
end
local s = redis.call('HMGET', KEYS[1], """
    + _STATE_FIELDS
    + """)
return {0, 0, s[1], s[2], s[3], s[4], s[5]}
"""
)

_STATE = (
    _MISSING
    + "local s = redis.call('HMGET', KEYS[1], "
    + _STATE_FIELDS
    + ")\nreturn {0, 0, s[1], s[2], s[3], s[4], s[5]}\n"
)

# ARGV: allowance, ttl_ms, used, granted, n_writers, then writer, batch, part each,
# then the grant ids. Creates the hash only if it does not exist (SET NX semantics).
_REBUILD = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local allowance, used, granted = tonumber(ARGV[1]), tonumber(ARGV[3]), tonumber(ARGV[4])
redis.call('HSET', KEYS[1], 'allowance', allowance, 'granted', granted,
           'balance', allowance + granted - used, 'used', used, 'reserved', 0)
local n = tonumber(ARGV[5])
for i = 0, n - 1 do
  redis.call('HSET', KEYS[1], 'ack:' .. ARGV[6 + 3 * i], ARGV[7 + 3 * i],
             'part:' .. ARGV[6 + 3 * i], ARGV[8 + 3 * i])
end
for i = 6 + 3 * n, #ARGV do
  redis.call('HSET', KEYS[1], 'g:' .. ARGV[i], 1)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""


@dataclass(frozen=True, slots=True)
class AccountState:
    allowance: int
    granted: int
    balance: int
    used: int
    reserved: int


@dataclass(frozen=True, slots=True)
class ReserveReply:
    granted: int
    # what this replica holds of `reserved` after the script
    mine: int
    state: AccountState


@dataclass(frozen=True, slots=True)
class SettleReply:
    released: int
    mine: int
    state: AccountState


def _state(raw: Sequence[Any]) -> AccountState:
    allowance, granted, balance, used, reserved = (int(v) for v in raw)
    return AccountState(allowance, granted, balance, used, reserved)


class CreditScripts:
    """The scripts, registered once; each returns None when the account must be rebuilt."""

    def __init__(self, redis: RedisClient) -> None:
        self._reserve = redis.register_script(_RESERVE)
        self._settle = redis.register_script(_SETTLE)
        self._grant = redis.register_script(_GRANT)
        self._state = redis.register_script(_STATE)
        self._rebuild = redis.register_script(_REBUILD)

    @staticmethod
    def _reply(raw: Sequence[Any]) -> ReserveReply | None:
        if int(raw[0]) == MISSING:
            return None
        return ReserveReply(int(raw[0]), int(raw[1]), _state(raw[2:]))

    async def reserve(
        self,
        keys: Sequence[str],
        *,
        replica: str,
        need: int,
        demand: int,
        want: int,
        share: int,
        dead_ms: int,
    ) -> ReserveReply | None:
        raw = await self._reserve(
            keys=list(keys), args=[replica, need, demand, want, share, dead_ms]
        )
        return self._reply(raw)

    async def settle(
        self,
        keys: Sequence[str],
        *,
        replica: str,
        release_all: bool,
        unspent: int,
        held: int,
        reconcile: bool,
        short_window_ms: int,
        chunks: Sequence[tuple[str, int, int]],
    ) -> SettleReply | None:
        args: list[str | int] = [
            replica,
            int(release_all),
            unspent,
            held,
            int(reconcile),
            short_window_ms,
            len(chunks),
        ]
        for writer, batch, credits in chunks:
            args.extend((writer, batch, credits))
        reply = self._reply(await self._settle(keys=list(keys), args=args))
        return None if reply is None else SettleReply(reply.granted, reply.mine, reply.state)

    async def grant(self, key: str, *, amount: int, grant_id: str) -> AccountState | None:
        reply = self._reply(await self._grant(keys=[key], args=[amount, grant_id]))
        return None if reply is None else reply.state

    async def state(self, key: str) -> AccountState | None:
        reply = self._reply(await self._state(keys=[key]))
        return None if reply is None else reply.state

    async def rebuild(
        self,
        key: str,
        *,
        allowance: int,
        ttl_ms: int,
        used: int,
        granted: int,
        writers: Sequence[tuple[str, int, int]],
        grants: Sequence[str],
    ) -> bool:
        """Create the account from the ledger's figures unless it exists; True if created."""
        args: list[str | int] = [allowance, ttl_ms, used, granted, len(writers)]
        for writer, batch, part in writers:
            args.extend((writer, batch, part))
        args.extend(grants)
        return bool(await self._rebuild(keys=[key], args=args))
