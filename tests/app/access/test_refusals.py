"""app.access decides and raises its own refusals, knowing nothing of HTTP; app.api maps each kind to its status and
headers (401 with the bearer challenge, 403, 429 with Retry-After and the bucket's state, 503)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.access.context import RequestContext
from app.access.control import AccessControl
from app.access.errors import AccessRefused, AccessUnavailable, NotAuthenticated, NotPermitted, RateLimited
from app.access.ratelimit import Decision
from app.api.errors import refusal_error
from app.observability.metrics import build_metrics
from app.settings import Settings
from tests.app.conftest import KeyFiles


def test_access_control_raises_its_own_refusals(make_settings: Callable[..., Settings], keyfiles: KeyFiles) -> None:
    async def run() -> list[tuple[type[AccessRefused], str]]:
        access = await AccessControl.create(make_settings(), build_metrics())
        seen: list[tuple[type[AccessRefused], str]] = []
        try:
            for authorization in ("", "Bearer sk-not-a-key", f"Bearer {keyfiles.raw['gone']}"):
                try:
                    await access.authenticate(
                        RequestContext("r", client_ip="127.0.0.1"), authorization, allow_api_key=True
                    )
                except AccessRefused as refusal:
                    seen.append((type(refusal), refusal.code))
            ctx = RequestContext("r", client_ip="127.0.0.1")
            alice = await access.authenticate(ctx, f"Bearer {keyfiles.raw['alice']}", allow_api_key=True)
            assert ctx.principal == alice and ctx.key_limit is not None and ctx.key_limit.allowed
            try:
                access.require_scope(alice, "admin")
            except AccessRefused as refusal:
                seen.append((type(refusal), refusal.code))
        finally:
            await access.close()
        return seen

    seen = asyncio.run(run())
    assert [kind for kind, _ in seen] == [NotAuthenticated, NotAuthenticated, NotAuthenticated, NotPermitted], seen
    assert seen[0][1] == "missing_credentials" and seen[-1][1] == "insufficient_scope"


BUCKET = Decision(allowed=False, limit=60, remaining=0, reset_s=30, retry_after_s=7)


@pytest.mark.parametrize(
    "refusal, status, headers",
    [
        (
            NotAuthenticated("invalid_token", "expired", reason="token_expired"),
            401,
            {"WWW-Authenticate": 'Bearer realm="clawbot"'},
        ),
        (NotPermitted("insufficient_scope", "needs admin", reason="missing_scope_admin"), 403, {}),
        (
            RateLimited("rate_limited", "slow down", reason="key_rate", retry_after_s=7, decision=BUCKET),
            429,
            {"Retry-After": "7", "X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "30"},
        ),
        (
            RateLimited("key_concurrency_limit", "one at a time", reason="key_concurrency_limit", retry_after_s=1),
            429,
            {"Retry-After": "1"},
        ),
        (AccessUnavailable("no_signing_key", "tell the operator"), 503, {}),
    ],
    ids=["401", "403", "429-bucket", "429-slots", "503"],
)
def test_the_api_maps_each_refusal_to_its_status(refusal: AccessRefused, status: int, headers: dict[str, str]) -> None:
    error = refusal_error(refusal)
    assert (error.status, error.code, error.message) == (status, refusal.code, refusal.message)
    assert dict(error.headers or {}) == headers
