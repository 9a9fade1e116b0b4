"""Access settings: token lifetime, the per-key rate limit, and how often keys rotate."""

from __future__ import annotations

from dataclasses import dataclass

from infra.settings.values import Raw, integer


@dataclass(frozen=True)
class AccessSettings:
    jwt_ttl_seconds: int
    rate_limit_per_key: int  # requests a minute
    key_rotation_days: int  # KEK, API keys and JWT keys


def parse_access(raw: Raw) -> AccessSettings:
    return AccessSettings(
        jwt_ttl_seconds=integer(raw, "jwtTtlSeconds"),
        rate_limit_per_key=integer(raw, "rateLimitPerKey"),
        key_rotation_days=integer(raw, "keyRotationDays", 1, 3650),
    )
