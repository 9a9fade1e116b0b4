"""Response cache for repeated deterministic questions, per API key: exact match on the model, the prompt's tokens and the parameters.

An entry is keyed by the caller's key id (no key is ever answered from another key's entries,
so the `cached` flag cannot tell one key what another asked), the model's identity (the
weights, quantization and dtype loaded, not the MODEL_NAME shown to clients), the exact token
sequence of the rendered prompt (no folding: different text is a different question) and the
sampling parameters. Only temperature-0 requests are cacheable (anything else is meant to vary).
Entries expire after CACHE_TTL_SECONDS and at most CACHE_MAX_ENTRIES are kept, in Redis when
REDIS_URL is set (shared by every replica) and always in process too, so a Redis outage keeps serving.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from app.observability.metrics import Metrics
from app.storage.redis_link import REDIS_PREFIX, RedisDown, RedisLink

CACHE_FORMAT = 2  # part of every key: bump it when the key's inputs or the stored value's shape change
INDEX_KEY = f"{REDIS_PREFIX}cache:index"

# SET with TTL, then keep the index (a sorted set by insertion time) to the newest N live keys.
_PUT_LUA = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), KEYS[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[2]))
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  redis.call('DEL', unpack(old))
  redis.call('ZREM', KEYS[2], unpack(old))
end
return excess
"""


class ResponseCache:
    def __init__(
        self,
        metrics: Metrics,
        *,
        ttl_s: int,
        max_entries: int,
        link: RedisLink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.link = link
        self.clock = clock
        self._local: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._put_script: Any = None

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0 and self.max_entries > 0

    def key_for(self, *, owner: str, model: str, prompt_ids: Sequence[int], params: Mapping[str, Any]) -> str | None:
        """The cache key, or None when the request is not cacheable (temperature not 0, or the cache is off).

        `owner`: whose entries (the API key id); `model`: the model's identity (app.inference.loader.model_identity);
        `prompt_ids`: the rendered prompt's tokens; `params`: every sampling parameter that shapes the answer.
        """
        if not self.enabled:
            return None
        temperature = params.get("temperature")
        if temperature is None or float(temperature) != 0.0:
            return None
        canonical = json.dumps(
            {"v": CACHE_FORMAT, "owner": owner, "model": model, "prompt": list(prompt_ids), "params": dict(params)},
            sort_keys=True,
            separators=(",", ":"),
            default=str,
        )
        return f"{REDIS_PREFIX}cache:{hashlib.sha256(canonical.encode()).hexdigest()}"

    async def get(self, key: str) -> dict[str, Any] | None:
        raw: str | None = None
        if self.link is not None:
            try:
                found = await self.link.call(lambda r: r.get(key))
                raw = found.decode() if isinstance(found, bytes) else found
            except RedisDown:
                raw = None
        if raw is None:
            raw = self._local_get(key)
        self.metrics.cache_lookups.labels(result="miss" if raw is None else "hit").inc()
        if raw is None:
            return None
        value: dict[str, Any] = json.loads(raw)
        return value

    async def put(self, key: str, value: dict[str, Any]) -> None:
        raw = json.dumps(value, separators=(",", ":"))
        self._local_put(key, raw)
        if self.link is not None:
            try:
                await self.link.call(lambda r: self._redis_put(r, key, raw))
            except RedisDown:
                pass

    async def _redis_put(self, r: Any, key: str, raw: str) -> None:
        if self._put_script is None:
            self._put_script = r.register_script(_PUT_LUA)
        await self._put_script(keys=[key, INDEX_KEY], args=[raw, self.ttl_s, f"{self.clock():.6f}", self.max_entries])

    # -- in-process LRU ----------------------------------------------------------------------
    def _local_get(self, key: str) -> str | None:
        item = self._local.get(key)
        if item is None:
            return None
        expires, raw = item
        if self.clock() >= expires:
            del self._local[key]
            return None
        self._local.move_to_end(key)
        return raw

    def _local_put(self, key: str, raw: str) -> None:
        self._local[key] = (self.clock() + self.ttl_s, raw)
        self._local.move_to_end(key)
        while len(self._local) > self.max_entries:
            self._local.popitem(last=False)

    def __len__(self) -> int:
        return len(self._local)
