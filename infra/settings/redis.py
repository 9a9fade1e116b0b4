"""Redis settings: whether the replicas share a response cache and rate-limit counters through Redis."""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import Raw, boolean, text


@dataclass(frozen=True)
class RedisSettings:
    enabled: bool
    image: str


def parse_redis(raw: Raw) -> RedisSettings:
    return RedisSettings(enabled=boolean(raw, "redisEnabled"), image=text(raw, "redisImage", required=True))
