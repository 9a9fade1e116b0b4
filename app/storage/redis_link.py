"""The one Redis connection the rate limiter and the response cache share, when REDIS_URL is set.

When Redis fails, each caller falls back to in-process state, the failure is counted
(`clawbot_redis_errors`) and logged once per outage, and Redis is tried again a second later.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from app.observability.metrics import Metrics

log = logging.getLogger("clawbot.redis")
T = TypeVar("T")

REDIS_RETRY_S = 1.0
REDIS_SOCKET_TIMEOUT_S = 0.5
REDIS_PREFIX = "clawbot:"


class RedisDown(Exception):
    """Redis is not usable right now; the caller uses its in-process state."""


class RedisLink:
    """A redis.asyncio client that fails fast and tells callers to fall back instead of raising into a request."""

    def __init__(self, url: str, metrics: Metrics, *, client: Any = None, retry_s: float | None = None) -> None:
        import redis.asyncio as aioredis
        from redis.exceptions import ConnectionError as RedisConnectionError

        self._connection_error = RedisConnectionError
        self.metrics = metrics
        self.retry_s = REDIS_RETRY_S if retry_s is None else retry_s
        self.client = client or aioredis.from_url(
            url,
            socket_connect_timeout=REDIS_SOCKET_TIMEOUT_S,
            socket_timeout=REDIS_SOCKET_TIMEOUT_S,
            health_check_interval=0,
            decode_responses=False,
        )
        self.up = False
        self._logged_down = False
        self._retry_at = 0.0

    async def start(self) -> None:
        """Ping once. Failure is logged and leaves the link down; it is retried on use, never fatal."""
        try:
            await self.client.ping()
        except Exception as exc:
            self._failed(exc)
            return
        self.up = True
        self._retry_at = 0.0
        log.info("redis connected; rate limits and the response cache are shared across replicas")

    def _failed(self, exc: BaseException) -> None:
        self.metrics.redis_errors.inc()
        self._retry_at = time.monotonic() + self.retry_s
        if not self._logged_down:
            # The URL may carry a password: log the error type, never the URL or the message.
            log.warning(
                "redis unavailable; using in-process state until it returns", extra={"error_type": type(exc).__name__}
            )
            self._logged_down = True
        self.up = False

    async def call(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run `fn(client)`; raise RedisDown (after counting and logging) if Redis cannot serve it.

        After a connection error `fn` runs once more, and the first run may have reached the server even though
        its reply was lost: every `fn` must be idempotent. Reads and SETs are; the rate limiter's script carries a
        receipt that answers a repeat with the first result, and a concurrency slot is named by its lease id.
        """
        if not self.up and time.monotonic() < self._retry_at:
            raise RedisDown()
        try:
            try:
                result = await fn(self.client)
            except self._connection_error:
                # A pooled connection that a restarted server closed fails once; a fresh one may not.
                result = await fn(self.client)
        except Exception as exc:
            self._failed(exc)
            raise RedisDown() from None
        if not self.up:
            self.up = True
            self._logged_down = False
            log.info("redis reachable again; shared state resumed")
        return result

    async def close(self) -> None:
        try:
            await self.client.aclose()
        except Exception:
            pass
