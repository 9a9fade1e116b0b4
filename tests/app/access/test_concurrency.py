"""Per-key concurrency slots: capped per key, shared by replicas through a real redis-server, leases that end by
themselves, idempotent under RedisLink's retry, and a service that keeps serving other keys while one is at its cap."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, Request

from app.access.concurrency import KeySlots
from app.access.control import AccessControl, Principal
from app.api.context import context_of
from app.api.errors import ApiError, install_error_handlers
from app.observability.metrics import build_metrics
from app.settings import Settings
from app.storage.redis_link import RedisLink
from bench.waiting import wait_until_async
from tests.app.access.test_ratelimit import LosesFirstReply
from tests.app.conftest import metric_value
from tests.redis_server import RedisServer


def test_in_process_slots_cap_each_key_and_come_back_on_release() -> None:
    async def run() -> None:
        slots = KeySlots(None, lease_s=60)
        first, second = await slots.acquire("alice", 2), await slots.acquire("alice", 2)
        assert first and second and await slots.acquire("alice", 2) is None
        assert await slots.acquire("bob", 2) is not None  # another key has its own slots
        await slots.release(first)
        assert await slots.acquire("alice", 2) is not None

    asyncio.run(run())


def test_replicas_share_the_cap_through_redis_and_a_dead_replicas_leases_end(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        a = KeySlots(RedisLink(redis_server.url, m), lease_s=60)
        dying = KeySlots(RedisLink(redis_server.url, m), lease_s=0.5)
        held = await a.acquire("alice", 3)
        assert held is not None and held.shared
        assert await dying.acquire("alice", 3) and await dying.acquire("alice", 3)  # then "crashes" without releasing
        assert await a.acquire("alice", 3) is None  # 3 held across the two replicas
        # The dead replica's leases end on Redis' clock.
        await wait_until_async("the leases of a dead replica to end", lambda: a.acquire("alice", 3), 30, poll_s=0.1)
        await a.release(held)
        assert metric_value(m, "clawbot_redis_errors_total") == 0

    asyncio.run(run())


def test_a_retried_acquire_after_a_lost_reply_holds_one_slot(redis_server: RedisServer) -> None:
    async def run() -> None:
        m = build_metrics()
        real = RedisLink(redis_server.url, m)
        slots = KeySlots(RedisLink(redis_server.url, m, client=LosesFirstReply(real.client)), lease_s=60)
        assert await slots.acquire("alice", 2) is not None  # ran twice on the server
        assert await slots.acquire("alice", 2) is not None  # so this would be refused if the retry had taken a second
        assert await real.client.zcard("clawbot:slots:alice") == 2
        await real.close()

    asyncio.run(run())


def _slot_app(settings: Settings, gate: asyncio.Event, entered: list[str]) -> FastAPI:
    """AccessControl.key_usage around a handler that waits for `gate`: requests stay in flight as long as a test wants."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/work/{key_id}")
    async def work(key_id: str, request: Request) -> dict[str, str]:
        access: AccessControl = request.app.state.access
        principal = Principal(key_id=key_id, scopes=frozenset({"chat"}), via="api_key")
        async with access.key_usage(context_of(request), principal):
            entered.append(key_id)
            await gate.wait()
            if key_id == "fails":
                raise ApiError(400, "invalid_request", "this request fails once it holds its slot")
        return {"ok": key_id}

    return app


@pytest.mark.parametrize("redis", [False, True], ids=["in-process", "redis"])
def test_a_key_at_its_cap_gets_429_while_other_keys_are_served_and_slots_free_on_errors(
    make_settings: Callable[..., Settings], request: pytest.FixtureRequest, redis: bool
) -> None:
    redis_url = request.getfixturevalue("redis_server").url if redis else None
    settings = make_settings(max_concurrent_per_key=2, redis_url=redis_url)

    async def run() -> None:
        metrics = build_metrics()
        link = RedisLink(redis_url, metrics) if redis_url else None
        gate, entered = asyncio.Event(), []
        app = _slot_app(settings, gate, entered)
        app.state.access = await AccessControl.create(settings, metrics, link)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            held = [asyncio.create_task(c.post("/work/alice")) for _ in range(2)]
            await wait_until_async(
                "the first two requests to get their slots", lambda: entered.count("alice") >= 2, 30, poll_s=0.01
            )
            refused = await c.post("/work/alice")
            assert refused.status_code == 429 and refused.json()["error"]["code"] == "key_concurrency_limit"
            assert refused.headers["retry-after"] == "1"
            other = asyncio.create_task(c.post("/work/bob"))  # another key is served while alice is at her cap
            gate.set()
            assert [r.status_code for r in await asyncio.gather(*held, other)] == [200, 200, 200]
            # Slots come back when a request fails, too: with a cap of 2, a leaked slot would make the third a 429.
            assert [(await c.post("/work/fails")).status_code for _ in range(3)] == [400, 400, 400]
        assert metric_value(metrics, "clawbot_rate_limited_total", scope="key_concurrency") == 1
        await app.state.access.close()
        if link is not None:
            await link.close()

    asyncio.run(run())
