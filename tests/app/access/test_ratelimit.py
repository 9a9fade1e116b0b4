"""Rate limits per key and per address: token buckets, shared through a real redis-server, surviving its loss."""
from __future__ import annotations

import asyncio
import logging
from typing import Callable

import pytest
from fastapi.testclient import TestClient

from app.storage import redis_link
from app.observability.metrics import Metrics, build_metrics
from app.access.ratelimit import RateLimiter
from app.storage.redis_link import RedisLink
from app.settings import Settings
from tests.app.conftest import KeyFiles, build_security_app, metric_value
from tests.redis_server import RedisServer


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def test_bucket_refuses_past_the_limit_and_refills_at_the_limit_rate() -> None:
    metrics, clock = build_metrics(), Clock()
    limiter = RateLimiter(metrics, clock=clock)

    async def run() -> None:
        decisions = [await limiter.hit("key", "alice", 5) for _ in range(6)]
        assert [d.allowed for d in decisions] == [True] * 5 + [False]
        assert [d.remaining for d in decisions[:5]] == [4, 3, 2, 1, 0]
        refused = decisions[-1]
        assert refused.headers() == {"X-RateLimit-Limit": "5", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "60",
                                     "Retry-After": "12"}  # 5 per minute: one token every 12 s
        assert "Retry-After" not in decisions[0].headers()
        clock.t += 12
        assert (await limiter.hit("key", "alice", 5)).allowed
        assert not (await limiter.hit("key", "alice", 5)).allowed
        assert (await limiter.hit("key", "bob", 5)).allowed  # buckets are per identity

    asyncio.run(run())
    assert metric_value(metrics, "clawbot_rate_limited_total", scope="key") == 2


def test_replicas_share_counts_through_redis(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        a = RateLimiter(m, RedisLink(redis_server.url, m))
        b = RateLimiter(m, RedisLink(redis_server.url, m))
        for limiter in (a, b):
            await limiter.link.start()  # type: ignore[union-attr]
        assert [(await a.hit("ip", "10.0.0.1", 4)).allowed for _ in range(2)] == [True, True]
        assert [(await b.hit("ip", "10.0.0.1", 4)).allowed for _ in range(2)] == [True, True]
        assert not (await a.hit("ip", "10.0.0.1", 4)).allowed  # replica a sees b's calls
        assert not (await b.hit("ip", "10.0.0.1", 4)).allowed
        assert metric_value(m, "clawbot_redis_errors_total") == 0
        for limiter in (a, b):
            await limiter.link.close()  # type: ignore[union-attr]

    asyncio.run(run())


def test_redis_stopping_mid_run_falls_back_then_reconnects(redis_server: RedisServer, caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> None:
        m = build_metrics()
        link = RedisLink(redis_server.url, m, retry_s=0.0)
        limiter = RateLimiter(m, link)
        await link.start()
        assert link.up
        assert (await limiter.hit("key", "alice", 100)).remaining == 99
        redis_server.stop()
        with caplog.at_level(logging.WARNING, logger="clawbot.redis"):
            during = [await limiter.hit("key", "alice", 100) for _ in range(3)]
        assert all(d.allowed for d in during)
        assert [d.remaining for d in during] == [98, 97, 96]  # carried on from the shared count, in process
        assert not link.up and metric_value(m, "clawbot_redis_errors_total") >= 1
        warnings = [r for r in caplog.records if "redis unavailable" in r.getMessage()]
        assert len(warnings) == 1  # one line per outage, not one per request
        assert redis_server.url not in caplog.text
        redis_server.start()
        await limiter.hit("key", "carol", 100)
        assert link.up  # back without a restart
        assert (await limiter.hit("key", "carol", 100)).remaining == 98  # shared state again (fresh server: fresh bucket)
        await link.close()

    asyncio.run(run())


def _flag_counts(limiters: list[RateLimiter], key_id: str, threshold: int) -> list[float]:
    """Send one call per limiter in turn; after each, how often the key has been flagged so far."""
    async def run() -> list[float]:
        counts = []
        for limiter in limiters:
            await limiter.hit_key(key_id, 1000, threshold)
            counts.append(metric_value(limiter.metrics, "clawbot_abnormal_key_usage_total", key_id=key_id))
        return counts

    return asyncio.run(run())


def test_abnormal_key_is_flagged_once_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    metrics, clock = build_metrics(), Clock()
    limiter = RateLimiter(metrics, clock=clock)
    with caplog.at_level(logging.WARNING, logger="clawbot.ratelimit"):
        assert _flag_counts([limiter] * 6, "alice", 3) == [0, 0, 0, 1, 1, 1]
    lines = [r for r in caplog.records if r.getMessage() == "abnormal key usage"]
    assert len(lines) == 1 and lines[0].key_id == "alice" and lines[0].threshold_per_minute == 3  # type: ignore[attr-defined]
    clock.t += 60
    assert _flag_counts([limiter] * 6, "alice", 3) == [1, 1, 1, 2, 2, 2]  # a new minute, a new count


def test_abnormal_count_is_fleet_wide_with_redis(redis_server: RedisServer) -> None:
    m = build_metrics()
    a, b = RateLimiter(m, RedisLink(redis_server.url, m)), RateLimiter(m, RedisLink(redis_server.url, m))
    assert _flag_counts([a, b, a, b, a], "bot", 3) == [0, 0, 0, 1, 1]


def test_service_answers_429_with_headers_per_key(make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics) -> None:
    with TestClient(build_security_app(make_settings(rate_limit_per_key=3), metrics)) as c:
        token = c.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}).json()["token"]  # 1 of 3
        bearer = {"Authorization": f"Bearer {token}"}
        first = c.post("/api/chat", json={}, headers=bearer)
        assert first.status_code == 200
        assert first.headers["X-RateLimit-Limit"] == "3" and first.headers["X-RateLimit-Remaining"] == "1"
        assert c.post("/api/chat", json={}, headers=bearer).status_code == 200
        refused = c.post("/api/chat", json={}, headers=bearer)
        assert refused.status_code == 429
        assert refused.json()["error"] == {"type": "rate_limit_error", "code": "rate_limited",
                                           "message": "rate limit for key 'alice' is 3 requests per minute; retry in 20 s"}
        assert refused.headers["Retry-After"] == "20" and refused.headers["X-RateLimit-Remaining"] == "0"
        # Another key is not affected.
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {keyfiles.raw['root']}"}).status_code == 200
    assert metric_value(metrics, "clawbot_rate_limited_total", scope="key") == 1
    assert metric_value(metrics, "clawbot_key_requests_total", key_id="alice") == 4


def test_service_limits_per_address_even_for_bad_credentials(
    make_settings: Callable[..., Settings], metrics: Metrics
) -> None:
    with TestClient(build_security_app(make_settings(rate_limit_per_ip=3), metrics)) as c:
        codes = [c.post("/api/auth", json={"api_key": f"ck-guess-{i}"}).status_code for i in range(5)]
    assert codes == [401, 401, 401, 429, 429]  # guessing keys costs the guesser's address its quota
    assert metric_value(metrics, "clawbot_rate_limited_total", scope="ip") == 2


def test_service_starts_and_serves_when_redis_is_down_at_start(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(redis_url="redis://:hunter2-password@127.0.0.1:1/0", rate_limit_per_key=2)
    with caplog.at_level(logging.WARNING), TestClient(build_security_app(settings, metrics)) as c:
        bearer = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}
        assert [c.get("/v1/models", headers=bearer).status_code for _ in range(3)] == [200, 200, 429]
    assert metric_value(metrics, "clawbot_redis_errors_total") >= 1
    assert "hunter2" not in caplog.text


def test_service_keeps_answering_when_redis_dies_mid_run(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics, redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(redis_link, "REDIS_RETRY_S", 0.0)
    settings = make_settings(redis_url=redis_server.url, rate_limit_per_key=1000)
    with TestClient(build_security_app(settings, metrics)) as c:
        bearer = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}
        assert c.get("/v1/models", headers=bearer).status_code == 200
        redis_server.stop()
        statuses = [c.get("/v1/models", headers=bearer).status_code for _ in range(5)]
        assert statuses == [200] * 5  # never a 5xx for it
        redis_server.start()
        assert c.get("/v1/models", headers=bearer).status_code == 200
        assert c.app.state.storage.link.up  # type: ignore[attr-defined]
    assert metric_value(metrics, "clawbot_redis_errors_total") >= 1
