"""The response cache: exact match on what decides the answer, temperature 0 only, bounded, shared via a real Redis."""
from __future__ import annotations

import asyncio

import pytest

from app.observability.metrics import build_metrics
from app.storage.redis_link import RedisLink
from app.storage.response_cache import ResponseCache
from tests.app.conftest import metric_value
from tests.redis_server import RedisServer

Q = [{"role": "user", "content": "What is the capital of France?"}]
P = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}


class Clock:
    def __init__(self) -> None:
        self.t = 1_000.0

    def __call__(self) -> float:
        return self.t


def _cache(**kw: object) -> ResponseCache:
    opts: dict = {"ttl_s": 60, "max_entries": 100}
    opts.update(kw)
    return ResponseCache(build_metrics(), **opts)


def test_key_matches_exactly_what_decides_the_answer() -> None:
    c = _cache()
    key = c.key_for("clawbot", Q, P)
    assert key is not None
    assert c.key_for("clawbot", [{"role": "User", "content": "  What is the capital\n of   France? "}], P) == key  # normalized
    assert c.key_for("clawbot", [{"role": "user", "content": "what is the capital of france?"}], P) != key  # case matters
    assert c.key_for("other-model", Q, P) != key
    assert c.key_for("clawbot", Q, {**P, "max_tokens": 65}) != key
    assert c.key_for("clawbot", Q, {**P, "stop": ["\n"]}) != key
    assert c.key_for("clawbot", [{"role": "system", "content": "Be terse."}, *Q], P) != key
    assert c.key_for("clawbot", Q, dict(reversed(list(P.items())))) == key  # parameter order does not matter


@pytest.mark.parametrize("temperature", [0.7, 1.0, None])
def test_only_deterministic_requests_are_cacheable(temperature: float | None) -> None:
    assert _cache().key_for("clawbot", Q, {**P, "temperature": temperature}) is None


def test_a_disabled_cache_caches_nothing() -> None:
    assert _cache(ttl_s=0).key_for("clawbot", Q, P) is None
    assert _cache(max_entries=0).key_for("clawbot", Q, P) is None


def test_hits_misses_ttl_and_size_bound_in_process() -> None:
    clock = Clock()
    cache = ResponseCache(build_metrics(), ttl_s=60, max_entries=2, clock=clock)

    async def run() -> None:
        k1, k2, k3 = (cache.key_for("m", [{"role": "user", "content": q}], P) for q in ("a", "b", "c"))
        assert k1 and k2 and k3
        assert await cache.get(k1) is None
        await cache.put(k1, {"text": "A"})
        assert await cache.get(k1) == {"text": "A"}
        await cache.put(k2, {"text": "B"})
        await cache.get(k1)  # k1 is now the most recently used
        await cache.put(k3, {"text": "C"})  # over the bound: evicts k2, the least recently used
        assert await cache.get(k2) is None and await cache.get(k1) == {"text": "A"} and len(cache) == 2
        clock.t += 61
        assert await cache.get(k1) is None  # expired

    asyncio.run(run())
    assert metric_value(cache.metrics, "clawbot_cache_lookups_total", result="hit") == 3
    assert metric_value(cache.metrics, "clawbot_cache_lookups_total", result="miss") == 3


def test_replicas_share_the_cache_through_redis_and_survive_its_loss(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        a = ResponseCache(m, ttl_s=60, max_entries=100, link=RedisLink(redis_server.url, m, retry_s=0.0))
        b = ResponseCache(m, ttl_s=60, max_entries=100, link=RedisLink(redis_server.url, m, retry_s=0.0))
        for c in (a, b):
            await c.link.start()  # type: ignore[union-attr]
        key = a.key_for("clawbot", Q, P)
        assert key is not None
        await a.put(key, {"text": "Paris", "finish_reason": "stop", "completion_tokens": 2})
        assert await b.get(key) == {"text": "Paris", "finish_reason": "stop", "completion_tokens": 2}  # b never saw the put
        redis_server.stop()
        assert await a.get(key) == {"text": "Paris", "finish_reason": "stop", "completion_tokens": 2}  # from its own copy
        other = a.key_for("clawbot", [{"role": "user", "content": "2+2?"}], P)
        assert other is not None
        await a.put(other, {"text": "4"})  # no exception while Redis is away
        assert await a.get(other) == {"text": "4"}
        assert metric_value(m, "clawbot_redis_errors_total") >= 2
        redis_server.start()
        await a.put(other, {"text": "4"})
        assert await b.get(other) == {"text": "4"}  # shared again
        for c in (a, b):
            await c.link.close()  # type: ignore[union-attr]

    asyncio.run(run())


def test_redis_holds_at_most_max_entries(redis_server: RedisServer) -> None:
    async def run() -> int:
        m = build_metrics()
        link = RedisLink(redis_server.url, m)
        cache = ResponseCache(m, ttl_s=60, max_entries=3, link=link)
        await link.start()
        for i in range(10):
            key = cache.key_for("m", [{"role": "user", "content": str(i)}], P)
            assert key is not None
            await cache.put(key, {"text": str(i)})
        stored = len([k async for k in link.client.scan_iter(match="clawbot:cache:*") if not k.endswith(b"index")])
        newest = cache.key_for("m", [{"role": "user", "content": "9"}], P)
        assert await link.client.get(newest) is not None
        await link.close()
        return stored

    assert asyncio.run(run()) == 3
