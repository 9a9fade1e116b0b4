"""The response cache: exact match on what decides the answer, per key, temperature 0 only, bounded, shared via a real Redis."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch

from app.inference.loader import LoadedModel, SamplingDefaults, model_identity
from app.observability.metrics import build_metrics
from app.storage.redis_link import RedisLink
from app.storage.response_cache import ResponseCache
from tests.app.conftest import metric_value
from tests.redis_server import RedisServer

Q = [1, 9690, 314, 260, 3575, 282, 4649, 47, 2]  # a rendered prompt's token ids
P = {"max_tokens": 64, "temperature": 0.0, "top_p": 1.0, "stop": [], "seed": None}
MODEL = "sha256-of-the-loaded-weights"


def key(
    cache: ResponseCache, prompt: list[int] = Q, params: dict | None = None, owner: str = "alice", model: str = MODEL
) -> str | None:
    return cache.key_for(owner=owner, model=model, prompt_ids=prompt, params=P if params is None else params)


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
    k = key(c)
    assert k is not None and key(c) == k
    assert key(c, owner="bob") != k  # one key's entries never answer another key
    assert key(c, model="sha256-of-another-revision") != k  # the weights, not MODEL_NAME
    assert key(c, prompt=[*Q[:-1], 220, 2]) != k  # one token more (a space) is another question
    assert key(c, params={**P, "max_tokens": 65}) != k
    assert key(c, params={**P, "stop": ["\n"]}) != k
    assert key(c, params=dict(reversed(list(P.items())))) == k  # parameter order does not matter


@pytest.mark.parametrize("temperature", [0.7, 1.0, None])
def test_only_deterministic_requests_are_cacheable(temperature: float | None) -> None:
    assert key(_cache(), params={**P, "temperature": temperature}) is None


def test_a_disabled_cache_caches_nothing() -> None:
    assert key(_cache(ttl_s=0)) is None
    assert key(_cache(max_entries=0)) is None


def test_hits_misses_ttl_and_size_bound_in_process() -> None:
    clock = Clock()
    cache = ResponseCache(build_metrics(), ttl_s=60, max_entries=2, clock=clock)

    async def run() -> None:
        k1, k2, k3 = (key(cache, prompt=[q]) for q in (1, 2, 3))
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
        paris = key(a)
        assert paris is not None
        await a.put(paris, {"text": "Paris", "finish_reason": "stop", "completion_tokens": 2})
        assert await b.get(paris) == {
            "text": "Paris",
            "finish_reason": "stop",
            "completion_tokens": 2,
        }  # b never saw the put
        redis_server.stop()
        assert await a.get(paris) == {
            "text": "Paris",
            "finish_reason": "stop",
            "completion_tokens": 2,
        }  # from its own copy
        other = key(a, prompt=[17, 18])
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
            entry = key(cache, prompt=[i])
            assert entry is not None
            await cache.put(entry, {"text": str(i)})
        stored = len([k async for k in link.client.scan_iter(match="clawbot:cache:*") if not k.endswith(b"index")])
        newest = key(cache, prompt=[9])
        assert await link.client.get(newest) is not None
        await link.close()
        return stored

    assert asyncio.run(run()) == 3


def test_the_model_identity_follows_the_weights_not_the_display_name(tmp_path: Path) -> None:
    weights = tmp_path / "model"
    weights.mkdir()
    (weights / "config.json").write_text('{"model_type": "llama"}')
    (weights / "model.safetensors").write_bytes(b"\x01" * 4096)

    def identity(quantization: str = "none", name: str = "clawbot") -> str:
        loaded = LoadedModel(
            model=None,
            tokenizer=None,
            device=torch.device("cpu"),
            dtype=torch.float32,  # type: ignore[arg-type]
            quantization=quantization,
            memory_bytes=0,
            source=weights,
            context_window=8192,
            name=name,
            sampling_defaults=SamplingDefaults(),
        )
        return model_identity(loaded)

    first = identity()
    assert identity(name="renamed-by-MODEL_NAME") == first
    assert identity(quantization="nf4") != first
    (weights / "model.safetensors").write_bytes(b"\x02" * 4096)  # a new revision: same size, other weights
    assert identity() != first
