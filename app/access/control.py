"""Access control the routes use: who is calling (API key or JWT), at what rate and concurrency, and the audit trail.

One `AccessControl` per app, made in the lifespan by `AccessControl.create`. It owns the key
ring, the token service, the rate limiter, the per-key concurrency slots and the audit log.
Whether an address may connect at all is decided before any route, by
app.api.middleware.network_rules. It works on the request's context (app.access.context), not on
HTTP: every refusal is an `AccessRefused` (app.access.errors) that app.api answers in the contract's
shape and hands back to `record_refusal`, which counts it in `clawbot_auth_failures{reason}` and
writes it to the audit trail; no credential ever reaches an error body, a log line or a metric label.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio

from app.access.audit import AuditLog
from app.access.concurrency import LEASE_MARGIN_S, KeySlots
from app.access.context import Principal, RequestContext
from app.access.errors import AccessRefused, AccessUnavailable, NotAuthenticated, NotPermitted, RateLimited
from app.access.key_material import open_key_ring
from app.access.keyfile import KeyFileError
from app.access.keyring import KEY_STATE_REASONS, ApiKeyEntry, KeyRing, format_time
from app.access.netrules import NetRules, address_group
from app.access.ratelimit import Decision, RateLimiter
from app.access.tokens import TokenError, TokenService
from app.observability.metrics import Metrics
from app.settings import Settings
from app.storage.redis_link import RedisLink

__all__ = ["AccessControl", "IssuedToken", "Principal"]
log = logging.getLogger("clawbot.access")
T = TypeVar("T")
# Statuses whose refusals count as failed authentications (clawbot_auth_failures), as the API answers them.
AUTH_FAILURE_STATUSES = (401, 403)


@dataclass(frozen=True)
class IssuedToken:
    token: str
    token_type: str
    expires_in: int  # seconds


class AccessControl:
    def __init__(self, settings: Settings, metrics: Metrics, *, ring: KeyRing, link: RedisLink | None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.ring = ring
        ring.reload_on_access = False  # reloaded off the event loop by `ring.refresh()` on each request instead
        self.tokens = TokenService(ring, audience=settings.jwt_audience, ttl_s=settings.jwt_ttl_s)
        self.netrules = NetRules.for_api(settings)
        self.limiter = RateLimiter(metrics, link)
        self.slots = KeySlots(link, lease_s=settings.generation_timeout_s + LEASE_MARGIN_S)
        self.audit = AuditLog()
        self._sighup_loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    async def create(cls, settings: Settings, metrics: Metrics, link: RedisLink | None = None) -> AccessControl:
        ring = open_key_ring(settings)
        self = cls(settings, metrics, ring=ring, link=link)
        self._install_sighup()
        log.info(
            "access control ready", extra={"api_key_ids": [k.id for k in ring.api_keys], "app_env": settings.app_env}
        )
        return self

    def _install_sighup(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            loop.add_signal_handler(signal.SIGHUP, self.ring.request_reload)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError):
            # Not the main thread (a test client's loop) or no SIGHUP here: mtime polling still reloads.
            return
        self._sighup_loop = loop

    async def close(self) -> None:
        if self._sighup_loop is not None:
            with contextlib.suppress(Exception):
                self._sighup_loop.remove_signal_handler(signal.SIGHUP)

    @property
    def hub_token(self) -> str | None:
        return self.ring.hub_token

    # -- helpers -----------------------------------------------------------------------------
    async def _admit_address(self, ctx: RequestContext) -> str:
        """Take a token from the address's bucket and refuse an address that failed authentication too often.

        Returns the address group (an IPv6 client counts by its /64) that failed authentications are charged to.
        """
        group = address_group(ctx.client_ip or "")
        decision = await self.limiter.hit("ip", group, self.settings.rate_limit_per_ip)
        ctx.address_limit = decision
        if not decision.allowed:
            raise _too_many(decision, "ip", "this address")
        failures = await self.limiter.check("auth_failures", group, self.settings.auth_failures_per_minute)
        if not failures.allowed:
            raise RateLimited(
                "too_many_auth_failures",
                f"too many failed authentications from this address (at most {failures.limit} a minute); "
                f"retry in {failures.retry_after_s} s",
                reason="too_many_auth_failures",
                retry_after_s=failures.retry_after_s,
            )
        return group

    async def _identified(self, group: str, identify: Callable[[], T]) -> T:
        """`identify()`, charging a refusal to the address group's failed-authentication budget."""
        try:
            return identify()
        except NotAuthenticated:
            await self.limiter.charge("auth_failures", group, self.settings.auth_failures_per_minute, 1)
            raise

    async def _admit_key(self, ctx: RequestContext, principal: Principal) -> None:
        ctx.principal = principal
        self.metrics.key_requests.labels(key_id=principal.key_id).inc()
        self.ring.mark_used(principal.key_id)
        decision = await self.limiter.hit_key(
            principal.key_id, self.settings.rate_limit_per_key, self.settings.abnormal_key_per_minute
        )
        ctx.key_limit = decision
        if not decision.allowed:
            raise _too_many(decision, "key", f"key {principal.key_id!r}")

    def _check_api_key(self, raw: str) -> ApiKeyEntry:
        entry, state = self.ring.verify(raw)
        if entry is None or state != "active":
            raise _key_refused(state)
        return entry

    def _bearer_principal(self, authorization: str, allow_api_key: bool) -> Principal:
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            what = "a bearer token from POST /api/auth" + (" or an API key" if allow_api_key else "")
            raise NotAuthenticated(
                "missing_credentials", f"send `Authorization: Bearer <token>` with {what}", reason="missing_credentials"
            )
        if allow_api_key:
            entry, state = self.ring.verify(credential)
            if entry is not None:
                if state != "active":
                    raise _key_refused(state)  # the same answer as /api/auth gives
                return Principal(key_id=entry.id, scopes=entry.scopes, via="api_key")
        if credential.count(".") != 2:
            if allow_api_key:
                raise _key_refused("unknown_key")
            raise NotAuthenticated(
                "invalid_token",
                "this route takes a bearer token from POST /api/auth, not an API key",
                reason="malformed_token",
            )
        try:
            claims = self.tokens.verify(credential)
        except TokenError as exc:
            code = "token_expired" if exc.reason == "token_expired" else "invalid_token"
            raise NotAuthenticated(code, exc.message, reason=exc.reason) from None
        return Principal(key_id=claims.key_id, scopes=claims.scopes, via="jwt")

    # -- the interface the API uses ------------------------------------------------------------
    async def issue_token(self, api_key: str, ctx: RequestContext) -> IssuedToken:
        await self.ring.refresh()
        group = await self._admit_address(ctx)
        entry = await self._identified(group, lambda: self._check_api_key(api_key))
        await self._admit_key(ctx, Principal(key_id=entry.id, scopes=entry.scopes, via="api_key"))
        try:
            token, expires_in = self.tokens.issue(entry)
        except KeyFileError:
            log.error("no current JWT signing key; /api/auth cannot issue tokens")
            raise AccessUnavailable(
                "no_signing_key", "the service has no current token signing key; tell its operator"
            ) from None
        return IssuedToken(token=token, token_type="bearer", expires_in=expires_in)

    async def authenticate(self, ctx: RequestContext, authorization: str, *, allow_api_key: bool) -> Principal:
        """The caller of a request whose Authorization header is `authorization`, within its address's and key's limits."""
        await self.ring.refresh()
        group = await self._admit_address(ctx)
        principal = await self._identified(group, lambda: self._bearer_principal(authorization, allow_api_key))
        await self._admit_key(ctx, principal)
        return principal

    @staticmethod
    def require_scope(principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            raise NotPermitted(
                "insufficient_scope",
                f"this route needs the {scope!r} scope; key {principal.key_id!r} lacks it",
                reason=f"missing_scope_{scope}",
            )

    @asynccontextmanager
    async def key_usage(self, ctx: RequestContext, principal: Principal) -> AsyncIterator[None]:
        """Hold one of the key's MAX_CONCURRENT_PER_KEY slots while the request is queued, generating and streaming.

        Refuses while the key's token budget is spent. The tokens the request used (`ctx.usage`: its answer's
        prompt + completion, or, when its client hung up, the prompt tokens its generation had read and the tokens
        it had generated) are charged when it ends, so a key may overdraw by what its requests in flight use and
        then waits until its budget refills. A key whose clients always hang up meets its budget like any other.
        """
        key_id, settings = principal.key_id, self.settings
        budget = await self.limiter.check("tokens", key_id, settings.rate_limit_tokens_per_key)
        if not budget.allowed:
            raise RateLimited(
                "token_budget_exceeded",
                f"key {key_id!r} has used its {budget.limit} tokens a minute; retry in {budget.retry_after_s} s",
                reason="token_budget_exceeded",
                retry_after_s=budget.retry_after_s,
            )
        lease = await self.slots.acquire(key_id, settings.max_concurrent_per_key)
        if lease is None:
            self.metrics.rate_limited.labels(scope="key_concurrency").inc()
            raise RateLimited(
                "key_concurrency_limit",
                f"key {key_id!r} already has {settings.max_concurrent_per_key} requests queued or in flight; "
                "retry when one has finished",
                reason="key_concurrency_limit",
                retry_after_s=1,
            )
        try:
            yield
        finally:
            # Shielded: a client that went away cancels the request, but its slot and its tokens are still settled.
            with anyio.CancelScope(shield=True):
                await self.slots.release(lease)
                ctx.end()
                used = ctx.usage
                if used is not None and used.total:
                    await self.limiter.charge("tokens", key_id, settings.rate_limit_tokens_per_key, used.total)

    def record_refusal(self, ctx: RequestContext, route: str, status: int, refusal: AccessRefused) -> None:
        """Count and audit a refusal, as the API answered it (`status`)."""
        if refusal.reason is None:
            return
        if status in AUTH_FAILURE_STATUSES:
            self.metrics.auth_failures.labels(reason=refusal.reason).inc()
        self.audit.log(ctx.principal, route, status, ctx.client_ip, reason=refusal.reason)
        ctx.audited = True

    def key_listing(self) -> list[dict[str, Any]]:
        now = self.ring.clock()
        return [
            {
                "id": k.id,
                "scopes": sorted(k.scopes),
                "not_before": format_time(k.not_before),
                "expires_at": format_time(k.expires_at),
                "status": k.state(now),
                "last_used": format_time(self.ring.last_used.get(k.id)),
            }
            for k in self.ring.api_keys
        ]


def _too_many(decision: Decision, scope: str, who: str) -> RateLimited:
    return RateLimited(
        "rate_limited",
        f"rate limit for {who} is {decision.limit} requests per minute; retry in {decision.retry_after_s} s",
        reason=f"rate_limited_{scope}",
        retry_after_s=decision.retry_after_s,
        decision=decision,
    )


def _key_refused(state: str) -> NotAuthenticated:
    # One message for unknown, revoked and expired keys: a caller learns nothing about which keys exist.
    return NotAuthenticated(
        "invalid_api_key", "the API key is invalid, expired or revoked", reason=KEY_STATE_REASONS.get(state, state)
    )
