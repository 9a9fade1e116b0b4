"""Rate limits per key, per address and per key's token budget: token buckets on Redis' clock, shared through a real
redis-server, idempotent under retries, surviving its loss; failed authentications slow an address down."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError

from app.access.ratelimit import RateLimiter
from app.api.errors import rate_limit_headers
from app.observability.metrics import Metrics, build_metrics
from app.settings import Settings
from app.storage import redis_link
from app.storage.redis_link import RedisLink
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
        # 5 per minute: one token every 12 s
        assert (refused.limit, refused.remaining, refused.reset_s, refused.retry_after_s) == (5, 0, 60, 12)
        assert rate_limit_headers(refused) == {
            "X-RateLimit-Limit": "5",
            "X-RateLimit-Remaining": "0",
            "X-RateLimit-Reset": "60",
            "Retry-After": "12",
        }
        assert "Retry-After" not in rate_limit_headers(decisions[0])
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


def test_redis_stopping_mid_run_falls_back_then_reconnects(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
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
        assert (
            await limiter.hit("key", "carol", 100)
        ).remaining == 98  # shared state again (fresh server: fresh bucket)
        await link.close()

    asyncio.run(run())


async def _flag_counts(limiters: list[RateLimiter], key_id: str, threshold: int) -> list[float]:
    """Send one call per limiter in turn; after each, how often the key has been flagged so far."""
    counts = []
    for limiter in limiters:
        await limiter.hit_key(key_id, 1000, threshold)
        counts.append(metric_value(limiter.metrics, "clawbot_abnormal_key_usage_total", key_id=key_id))
    return counts


def test_abnormal_key_is_flagged_once_per_minute(caplog: pytest.LogCaptureFixture) -> None:
    metrics, clock = build_metrics(), Clock()
    limiter = RateLimiter(metrics, clock=clock)
    with caplog.at_level(logging.WARNING, logger="clawbot.ratelimit"):
        assert asyncio.run(_flag_counts([limiter] * 6, "alice", 3)) == [0, 0, 0, 1, 1, 1]
    lines = [r for r in caplog.records if r.getMessage() == "abnormal key usage"]
    assert len(lines) == 1 and lines[0].key_id == "alice" and lines[0].threshold_per_minute == 3  # type: ignore[attr-defined]
    clock.t += 60
    assert asyncio.run(_flag_counts([limiter] * 6, "alice", 3)) == [1, 1, 1, 2, 2, 2]  # a new minute, a new count


def test_abnormal_count_is_fleet_wide_with_redis(redis_server: RedisServer) -> None:
    m = build_metrics()
    a, b = RateLimiter(m, RedisLink(redis_server.url, m)), RateLimiter(m, RedisLink(redis_server.url, m))
    assert asyncio.run(_flag_counts([a, b, a, b, a], "bot", 3)) == [0, 0, 0, 1, 1]


def test_service_answers_429_with_headers_per_key(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics
) -> None:
    with TestClient(build_security_app(make_settings(rate_limit_per_key=3), metrics)) as c:
        token = c.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}).json()["token"]  # 1 of 3
        bearer = {"Authorization": f"Bearer {token}"}
        first = c.post("/api/chat", json={}, headers=bearer)
        assert first.status_code == 200
        assert first.headers["X-RateLimit-Limit"] == "3" and first.headers["X-RateLimit-Remaining"] == "1"
        assert c.post("/api/chat", json={}, headers=bearer).status_code == 200
        refused = c.post("/api/chat", json={}, headers=bearer)
        assert refused.status_code == 429
        assert refused.json()["error"] == {
            "type": "rate_limit_error",
            "code": "rate_limited",
            "message": "rate limit for key 'alice' is 3 requests per minute; retry in 20 s",
        }
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
    make_settings: Callable[..., Settings],
    keyfiles: KeyFiles,
    metrics: Metrics,
    redis_server: RedisServer,
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


def test_replicas_whose_clocks_disagree_by_minutes_share_one_bucket_on_redis_time(redis_server: RedisServer) -> None:
    m = build_metrics()
    slow = RateLimiter(m, RedisLink(redis_server.url, m), clock=lambda: time.time() - 300)  # five minutes behind
    exact = RateLimiter(m, RedisLink(redis_server.url, m))

    async def run() -> None:
        assert [(await slow.hit("key", "alice", 4)).allowed for _ in range(4)] == [True] * 4
        # On each replica's own clock, `exact` would see five minutes of refill since `slow`'s calls and let it through.
        refused = await exact.hit("key", "alice", 4)
        assert not refused.allowed and refused.retry_after_s <= 15
        assert not (await slow.hit("key", "alice", 4)).allowed
        # The abnormal-usage minute is Redis' too: calls through both replicas count in one window.
        assert await _flag_counts([slow, exact, slow, exact], "bot", 3) == [0, 0, 0, 1]

    asyncio.run(run())


class LosesFirstReply:
    """A redis client whose first script call runs on the server but whose reply is lost, as when a connection drops."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.lost = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def register_script(self, script: str) -> AsyncScript:
        return AsyncScript(self, script)  # runs its EVALSHA through this client, so the loss below applies

    async def evalsha(self, *args: Any, **kwargs: Any) -> Any:
        reply = await self.real.evalsha(*args, **kwargs)
        if not self.lost:
            self.lost += 1
            raise RedisConnectionError("reply lost")
        return reply


def test_a_script_retried_after_a_lost_reply_takes_one_token_not_two(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        real = RedisLink(redis_server.url, m)
        lossy = LosesFirstReply(real.client)
        limiter = RateLimiter(m, RedisLink(redis_server.url, m, client=lossy))
        first = await limiter.hit("key", "alice", 10)  # ran twice on the server: once lost, once retried by RedisLink
        assert lossy.lost == 1 and first.allowed
        assert first.remaining == 9
        assert (await limiter.hit("key", "alice", 10)).remaining == 8
        assert metric_value(m, "clawbot_redis_errors_total") == 0  # the retry answered; no fallback to local state
        await real.close()

    asyncio.run(run())


def test_token_budget_is_spent_after_the_fact_and_refuses_until_it_refills() -> None:
    metrics, clock = build_metrics(), Clock()
    limiter = RateLimiter(metrics, clock=clock)

    async def run() -> None:
        assert (await limiter.check("tokens", "alice", 600)).allowed  # 600 tokens a minute: 10 a second
        await limiter.charge("tokens", "alice", 600, 900)  # one big answer overdraws the budget by 300
        refused = await limiter.check("tokens", "alice", 600)
        assert not refused.allowed and refused.retry_after_s == 31  # 301 tokens to earn back at 10 a second
        assert (await limiter.check("tokens", "bob", 600)).allowed  # budgets are per key
        clock.t += 31
        assert (await limiter.check("tokens", "alice", 600)).allowed

    asyncio.run(run())
    assert metric_value(metrics, "clawbot_rate_limited_total", scope="tokens") == 1


def test_token_budget_is_fleet_wide_with_redis(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        a, b = RateLimiter(m, RedisLink(redis_server.url, m)), RateLimiter(m, RedisLink(redis_server.url, m))
        await a.charge("tokens", "alice", 600, 700)
        refused = await b.check("tokens", "alice", 600)
        assert not refused.allowed and 10 <= refused.retry_after_s <= 11

    asyncio.run(run())


def test_ipv6_clients_are_limited_per_64_and_ipv4_per_address(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles
) -> None:
    settings = make_settings(rate_limit_per_ip=2, trusted_proxies=("127.0.0.0/8",))
    bearer = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}
    with TestClient(build_security_app(settings), client=("127.0.0.1", 5000)) as c:

        def status(address: str) -> int:
            return c.get("/v1/models", headers={**bearer, "X-Forwarded-For": address}).status_code

        # Three addresses of one /64: one client hopping addresses inside its allocation.
        assert [status(a) for a in ("2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::9")] == [200, 200, 429]
        assert status("2001:db8:0:2::1") == 200  # the next /64 is someone else
        assert [status(a) for a in ("10.0.0.1", "10.0.0.1", "10.0.0.2")] == [200, 200, 200]  # IPv4: per address


def test_failed_authentications_get_the_address_429_even_for_a_good_key(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, metrics: Metrics
) -> None:
    settings = make_settings(auth_failures_per_minute=3, trusted_proxies=("127.0.0.0/8",))
    guesser, other = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.1"}
    with TestClient(build_security_app(settings, metrics), client=("127.0.0.1", 5000)) as c:
        guesses = [
            c.post("/api/auth", json={"api_key": f"ck-guess-{i}"}, headers=guesser).status_code for i in range(3)
        ]
        assert guesses == [401, 401, 401]
        for attempt in (
            c.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}, headers=guesser),
            c.get("/v1/models", headers={**guesser, "Authorization": f"Bearer {keyfiles.raw['alice']}"}),
        ):
            assert attempt.status_code == 429, attempt.text
            assert attempt.json()["error"]["code"] == "too_many_auth_failures"
            assert 1 <= int(attempt.headers["Retry-After"]) <= 20
        # Another address is not slowed down, and good credentials there do not count as failures.
        assert c.post("/api/auth", json={"api_key": keyfiles.raw["alice"]}, headers=other).status_code == 200
    assert metric_value(metrics, "clawbot_rate_limited_total", scope="auth_failures") == 2
