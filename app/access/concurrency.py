"""How many requests one API key may have queued or in flight at once (MAX_CONCURRENT_PER_KEY).

Without a cap, one key well inside its requests-per-minute limit can fill the engine's shared queue
and every other key gets "queue full". With Redis the slots are shared by every replica: a sorted set
of leases per key, timed on Redis' clock. A lease outlives any request (the generation timeout plus a
margin), so the slots of a replica that died holding them come back when its leases end. Taking a slot
is idempotent (the lease names itself), so RedisLink's retry after a lost reply never takes two.
Without Redis, or while it is away, slots are counted in process.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from app.storage.redis_link import REDIS_PREFIX, RedisDown, RedisLink

# Time a lease may outlive the generation timeout: prompt rendering before, the stream's last bytes after.
LEASE_MARGIN_S = 60.0

# KEYS[1]: the key's leases (member: lease id, score: expiry). ARGV: lease id, limit, lease seconds.
_ACQUIRE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[3]) * 1000))
return 1
"""


@dataclass(frozen=True)
class Lease:
    key_id: str
    lease_id: str
    shared: bool  # held in Redis; else counted in this process


class KeySlots:
    def __init__(self, link: RedisLink | None, *, lease_s: float) -> None:
        self.link = link
        self.lease_s = lease_s
        self._local: dict[str, int] = {}
        self._script: Any = None

    async def acquire(self, key_id: str, limit: int) -> Lease | None:
        """A lease on one of the key's `limit` slots, or None when all are taken. Release it with `release`."""
        lease_id = secrets.token_hex(12)
        if self.link is not None:
            try:
                got = await self.link.call(lambda r: self._redis_acquire(r, key_id, lease_id, limit))
                return Lease(key_id, lease_id, shared=True) if got else None
            except RedisDown:
                pass
        if self._local.get(key_id, 0) >= limit:
            return None
        self._local[key_id] = self._local.get(key_id, 0) + 1
        return Lease(key_id, lease_id, shared=False)

    async def release(self, lease: Lease) -> None:
        if not lease.shared:
            left = self._local.get(lease.key_id, 0) - 1
            if left > 0:
                self._local[lease.key_id] = left
            else:
                self._local.pop(lease.key_id, None)
            return
        if self.link is not None:
            try:
                await self.link.call(lambda r: r.zrem(self._name(lease.key_id), lease.lease_id))
            except RedisDown:
                pass  # the lease ends by itself

    @staticmethod
    def _name(key_id: str) -> str:
        return f"{REDIS_PREFIX}slots:{key_id}"

    async def _redis_acquire(self, r: Any, key_id: str, lease_id: str, limit: int) -> bool:
        if self._script is None:
            self._script = r.register_script(_ACQUIRE_LUA)
        return bool(int(await self._script(keys=[self._name(key_id)], args=[lease_id, limit, self.lease_s])))
