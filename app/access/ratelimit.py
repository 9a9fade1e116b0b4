"""Token buckets per API key, per client address and per key's token budget, shared through Redis when REDIS_URL is set.

With Redis the buckets run on Redis' clock (TIME inside the script), so replicas whose clocks disagree
still share one timeline, and every call carries a receipt: a call that RedisLink retries after a lost
reply finds the receipt and gets the first answer back instead of taking a second token.
When Redis fails (`app.storage.redis_link`), the limiter falls back to in-process buckets on the local clock.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.observability.metrics import Metrics
from app.storage.redis_link import REDIS_PREFIX, RedisDown, RedisLink

log = logging.getLogger("clawbot.ratelimit")

LOCAL_PRUNE_AT = 50_000  # buckets; above this, full (idle) buckets are dropped
ABNORMAL_COUNT_TTL_S = 120
# How long a call's receipt is kept: far longer than RedisLink's one immediate retry needs.
RECEIPT_TTL_S = 30
# `need` for a charge that always goes through (Lua has no literal for -inf).
ALWAYS = -1e300

# One bucket in one round trip, on the server's clock. KEYS: the bucket, this call's receipt and, optionally,
# the key's abnormal-usage window (a count per minute of server time). ARGV: capacity, refill per second,
# tokens that must be there (`need`), tokens taken when they are (`cost`), receipt TTL, window TTL.
# Tokens come back as a string: Lua numbers reply as truncated integers. A bucket may go below zero (a
# charge after the fact); it lives until it is full again, so a debt is never forgotten by expiry.
_BUCKET_LUA = """
local done = redis.call('GET', KEYS[2])
if done then return cjson.decode(done) end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap, rate, need, cost = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local s = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= need then tokens = tokens - cost; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil((cap - tokens) / rate * 1000) + 1000)
local count = 0
if KEYS[3] then
  local minute = math.floor(now / 60)
  local w = redis.call('HMGET', KEYS[3], 'm', 'n')
  if tonumber(w[1]) == minute then count = tonumber(w[2]) + 1 else count = 1 end
  redis.call('HSET', KEYS[3], 'm', minute, 'n', count)
  redis.call('EXPIRE', KEYS[3], tonumber(ARGV[6]))
end
local out = {allowed, tostring(tokens), count}
redis.call('SET', KEYS[2], cjson.encode(out), 'EX', tonumber(ARGV[5]))
return out
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # 0 when allowed


def _decision(allowed: bool, tokens: float, limit: int, need: float) -> Decision:
    rate = limit / 60.0
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(int(math.floor(tokens)), 0),
        reset_s=int(math.ceil(max(limit - tokens, 0.0) / rate)),
        retry_after_s=0 if allowed else max(int(math.ceil((need - tokens) / rate)), 1),
    )


class RateLimiter:
    """`hit` takes one token; `check` asks whether a budget has any left and `charge` spends it after the fact;
    `hit_key` takes a key's token and counts the call towards the abnormal-usage flag."""

    def __init__(
        self, metrics: Metrics, link: RedisLink | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.metrics = metrics
        self.link = link
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._minute_counts: dict[tuple[str, int], int] = {}
        self._script: Any = None

    # -- token buckets -----------------------------------------------------------------------
    async def hit(self, scope: str, ident: str, per_minute: int) -> Decision:
        return (await self._take(scope, ident, per_minute, need=1.0, cost=1.0))[0]

    async def check(self, scope: str, ident: str, per_minute: int) -> Decision:
        """Allowed while the bucket holds at least one token; takes nothing."""
        return (await self._take(scope, ident, per_minute, need=1.0, cost=0.0))[0]

    async def charge(self, scope: str, ident: str, per_minute: int, amount: int) -> None:
        """Take `amount` tokens whatever is left: the bucket may go below zero and refuse `check` until it refills."""
        await self._take(scope, ident, per_minute, need=ALWAYS, cost=float(amount))

    async def hit_key(self, key_id: str, per_minute: int, abnormal_threshold: int) -> Decision:
        """`hit("key", key_id, per_minute)`, counting the call (allowed or not) in the key's minute, in one round trip.

        The key is flagged (metric and log line) on the call that first passes `abnormal_threshold` in a minute.
        """
        decision, count = await self._take(
            "key", key_id, per_minute, need=1.0, cost=1.0, window=f"{REDIS_PREFIX}abn:{key_id}"
        )
        self._note(key_id, count, abnormal_threshold)
        return decision

    async def _take(
        self, scope: str, ident: str, per_minute: int, *, need: float, cost: float, window: str | None = None
    ) -> tuple[Decision, int | None]:
        """Take `cost` tokens if `need` are there; with `window`, count a call there too (None: Redis did not answer)."""
        name = f"{REDIS_PREFIX}rl:{scope}:{ident}"
        now = self.clock()
        if self.link is not None:
            receipt = f"{REDIS_PREFIX}rl:receipt:{secrets.token_hex(12)}"
            try:
                allowed, tokens, count = await self.link.call(
                    lambda r: self._redis_take(
                        r, [name, receipt, *([window] if window else [])], per_minute, need, cost
                    )
                )
                # Mirror the shared count locally so a Redis outage starts from where the fleet was.
                self._buckets[name] = (tokens, now)
                if len(self._buckets) > LOCAL_PRUNE_AT:
                    self._prune(now)
                return self._count(scope, _decision(allowed, tokens, per_minute, need)), count if window else None
            except RedisDown:
                pass
        return self._count(scope, self._local_take(name, per_minute, need, cost, now)), None

    async def _redis_take(
        self, r: Any, keys: list[str], per_minute: int, need: float, cost: float
    ) -> tuple[bool, float, int]:
        if self._script is None:
            self._script = r.register_script(_BUCKET_LUA)
        allowed, tokens, count = await self._script(
            keys=keys, args=[per_minute, per_minute / 60.0, repr(need), repr(cost), RECEIPT_TTL_S, ABNORMAL_COUNT_TTL_S]
        )
        return bool(int(allowed)), float(tokens), int(count)

    def _local_take(self, name: str, per_minute: int, need: float, cost: float, now: float) -> Decision:
        rate = per_minute / 60.0
        tokens, ts = self._buckets.get(name, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + max(0.0, now - ts) * rate)
        allowed = tokens >= need
        if allowed:
            tokens -= cost
        self._buckets[name] = (tokens, max(now, ts))
        if len(self._buckets) > LOCAL_PRUNE_AT:
            self._prune(now)
        return _decision(allowed, tokens, per_minute, need)

    def _prune(self, now: float) -> None:
        # A bucket that is full again is the same as a missing one; one in debt is kept until it has refilled.
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0 or v[0] < 0}

    def _count(self, scope: str, d: Decision) -> Decision:
        if not d.allowed:
            self.metrics.rate_limited.labels(scope=scope).inc()
        return d

    # -- abnormal usage ----------------------------------------------------------------------
    def _note(self, key_id: str, count: int | None, threshold: int) -> None:
        """Flag the key if this call, the `count`th of the minute (None: count it in process), first passes `threshold`."""
        if count is None:
            minute = int(self.clock() // 60)
            slot = (key_id, minute)
            count = self._minute_counts.get(slot, 0) + 1
            self._minute_counts[slot] = count
            if len(self._minute_counts) > 1024:
                self._minute_counts = {k: v for k, v in self._minute_counts.items() if k[1] >= minute - 1}
        if count == threshold + 1:
            self.metrics.abnormal_keys.labels(key_id=key_id).inc()
            log.warning(
                "abnormal key usage",
                extra={"key_id": key_id, "calls_this_minute": count, "threshold_per_minute": threshold},
            )
