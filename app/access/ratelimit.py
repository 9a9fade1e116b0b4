"""Rate limits per API key and per client address (token buckets), shared through Redis when REDIS_URL is set.

When Redis fails (`app.storage.redis_link`), the limiter falls back to in-process buckets.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, Callable

from app.observability.metrics import Metrics
from app.storage.redis_link import REDIS_PREFIX, RedisDown, RedisLink

log = logging.getLogger("clawbot.ratelimit")

LOCAL_PRUNE_AT = 50_000  # buckets; above this, full (idle) buckets are dropped
ABNORMAL_COUNT_TTL_S = 120

# Token bucket in one round trip. Tokens come back as a string: Lua numbers reply as truncated integers.
# With a second key, also counts one call there (the abnormal-usage count), so a key's request needs one trip, not two.
_BUCKET_LUA = """
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local now = tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 't', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then tokens = cap; ts = now end
tokens = math.min(cap, tokens + math.max(0, now - ts) * rate)
local allowed = 0
if tokens >= 1 then tokens = tokens - 1; allowed = 1 end
redis.call('HSET', KEYS[1], 't', tostring(tokens), 'ts', tostring(math.max(now, ts)))
redis.call('PEXPIRE', KEYS[1], math.ceil(cap / rate * 1000) + 1000)
local count = 0
if KEYS[2] then
  count = redis.call('INCR', KEYS[2])
  redis.call('EXPIRE', KEYS[2], tonumber(ARGV[4]))
end
return {allowed, tostring(tokens), count}
"""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int  # seconds until the bucket is full again
    retry_after_s: int  # 0 when allowed

    def headers(self) -> dict[str, str]:
        h = {"X-RateLimit-Limit": str(self.limit), "X-RateLimit-Remaining": str(self.remaining), "X-RateLimit-Reset": str(self.reset_s)}
        if not self.allowed:
            h["Retry-After"] = str(self.retry_after_s)
        return h


def _decision(allowed: bool, tokens: float, limit: int) -> Decision:
    rate = limit / 60.0
    return Decision(
        allowed=allowed,
        limit=limit,
        remaining=max(int(math.floor(tokens)), 0),
        reset_s=int(math.ceil(max(limit - tokens, 0.0) / rate)),
        retry_after_s=0 if allowed else max(int(math.ceil((1.0 - tokens) / rate)), 1),
    )


class RateLimiter:
    """`hit(scope, ident, per_minute)` takes one token; `note_key_call` flags keys above the abnormal rate;
    `hit_key` does both for an API key."""

    def __init__(self, metrics: Metrics, link: RedisLink | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.metrics = metrics
        self.link = link
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._minute_counts: dict[tuple[str, int], int] = {}
        self._script: Any = None

    # -- token buckets -----------------------------------------------------------------------
    async def hit(self, scope: str, ident: str, per_minute: int) -> Decision:
        return (await self._take(scope, ident, per_minute))[0]

    async def hit_key(self, key_id: str, per_minute: int, abnormal_threshold: int) -> Decision:
        """`note_key_call(key_id, abnormal_threshold)` then `hit("key", key_id, per_minute)`, in one Redis round trip."""
        minute = int(self.clock() // 60)
        decision, count = await self._take("key", key_id, per_minute, counter=self._abnormal_name(key_id, minute))
        self._note(key_id, minute, count, abnormal_threshold)
        return decision

    async def _take(self, scope: str, ident: str, per_minute: int, counter: str | None = None) -> tuple[Decision, int | None]:
        """Take a token; with `counter`, also count a call there. The count is None when Redis did not answer."""
        name = f"{REDIS_PREFIX}rl:{scope}:{ident}"
        now = self.clock()
        if self.link is not None:
            try:
                allowed, tokens, count = await self.link.call(lambda r: self._redis_take(r, name, per_minute, now, counter))
                # Mirror the shared count locally so a Redis outage starts from where the fleet was.
                self._buckets[name] = (tokens, now)
                if len(self._buckets) > LOCAL_PRUNE_AT:
                    self._prune(now)
                return self._count(scope, _decision(allowed, tokens, per_minute)), count
            except RedisDown:
                pass
        return self._count(scope, self._local_take(name, per_minute, now)), None

    async def _redis_take(
        self, r: Any, name: str, per_minute: int, now: float, counter: str | None
    ) -> tuple[bool, float, int | None]:
        if self._script is None:
            self._script = r.register_script(_BUCKET_LUA)
        keys = [name] if counter is None else [name, counter]
        allowed, tokens, count = await self._script(
            keys=keys, args=[per_minute, per_minute / 60.0, f"{now:.6f}", ABNORMAL_COUNT_TTL_S]
        )
        return bool(int(allowed)), float(tokens), None if counter is None else int(count)

    def _local_take(self, name: str, per_minute: int, now: float) -> Decision:
        rate = per_minute / 60.0
        tokens, ts = self._buckets.get(name, (float(per_minute), now))
        tokens = min(float(per_minute), tokens + max(0.0, now - ts) * rate)
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        self._buckets[name] = (tokens, max(now, ts))
        if len(self._buckets) > LOCAL_PRUNE_AT:
            self._prune(now)
        return _decision(allowed, tokens, per_minute)

    def _prune(self, now: float) -> None:
        # A bucket idle for a minute is full again, the same as a missing one.
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60.0}

    def _count(self, scope: str, d: Decision) -> Decision:
        if not d.allowed:
            self.metrics.rate_limited.labels(scope=scope).inc()
        return d

    # -- abnormal usage ----------------------------------------------------------------------
    async def note_key_call(self, key_id: str, threshold: int) -> bool:
        """Count one call (allowed or not) in this minute; True (and metric + log) when the key first passes `threshold`."""
        minute = int(self.clock() // 60)
        count: int | None = None
        if self.link is not None:
            name = self._abnormal_name(key_id, minute)
            try:
                count = await self.link.call(lambda r: self._redis_incr(r, name))
            except RedisDown:
                count = None
        return self._note(key_id, minute, count, threshold)

    @staticmethod
    def _abnormal_name(key_id: str, minute: int) -> str:
        return f"{REDIS_PREFIX}abn:{key_id}:{minute}"

    def _note(self, key_id: str, minute: int, count: int | None, threshold: int) -> bool:
        """Flag the key if this call, the `count`th of the minute (None: count it in process), first passes `threshold`."""
        if count is None:
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
            return True
        return False

    async def _redis_incr(self, r: Any, name: str) -> int:
        pipe = r.pipeline(transaction=True)
        pipe.incr(name)
        pipe.expire(name, ABNORMAL_COUNT_TTL_S)
        count, _ = await pipe.execute()
        return int(count)
