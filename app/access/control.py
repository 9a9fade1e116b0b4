"""Access control the routes use: who is calling (API key or JWT), at what rate and concurrency, and the audit trail.

One `AccessControl` per app, made in the lifespan by `AccessControl.create`. It owns the key
ring, the token service, the rate limiter, the per-key concurrency slots and the audit log.
Whether an address may connect at all is decided before any route, by
app.api.middleware.network_rules. Every refusal is an `ApiError` in the contract's shape,
counted in `clawbot_auth_failures{reason}` or `clawbot_rate_limited{scope}` and written to the
audit trail; no credential ever reaches an error body, a log line or a metric label.
"""
from __future__ import annotations

import contextlib
import asyncio
import logging
import signal
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, TypeVar

import anyio
from fastapi import Request

from app.access.audit import AuditLog
from app.access.concurrency import LEASE_MARGIN_S, KeySlots
from app.access.key_material import open_key_ring
from app.access.keyfile import KeyFileError
from app.access.keyring import KEY_STATE_REASONS, ApiKeyEntry, KeyRing, format_time
from app.access.netrules import NetRules, address_group
from app.access.ratelimit import Decision, RateLimiter
from app.access.tokens import TokenError, TokenService
from app.api.errors import ApiError
from app.observability.metrics import Metrics, route_of
from app.settings import Settings
from app.storage.redis_link import RedisLink

log = logging.getLogger("clawbot.access")
T = TypeVar("T")

_BEARER_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="clawbot"'}


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[str]
    via: str  # "jwt" | "api_key"


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
    async def create(cls, settings: Settings, metrics: Metrics, link: RedisLink | None = None) -> "AccessControl":
        ring = open_key_ring(settings)
        self = cls(settings, metrics, ring=ring, link=link)
        self._install_sighup()
        log.info("access control ready", extra={"api_key_ids": [k.id for k in ring.api_keys], "app_env": settings.app_env})
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
    def client_address(self, request: Request) -> str:
        """The client's address, as the network-rules middleware decided it (computed here for an app without it)."""
        cached = getattr(request.state, "client_ip", None)
        if isinstance(cached, str):
            return cached
        peer = request.client.host if request.client else None
        address = self.netrules.client_address(peer, request.headers.getlist("x-forwarded-for"))
        request.state.client_ip = address
        return address

    def _refuse(
        self, request: Request, status: int, code: str, message: str, reason: str, headers: dict[str, str] | None = None
    ) -> ApiError:
        if status in (401, 403):
            self.metrics.auth_failures.labels(reason=reason).inc()
        self.audit.log(getattr(request.state, "principal", None), route_of(request.scope), status, self.client_address(request), reason=reason)
        request.state.audited = True
        return ApiError(status, code, message, headers=headers)

    async def _admit_address(self, request: Request) -> str:
        """Take a token from the address's bucket and refuse an address that failed authentication too often.

        Returns the address group (an IPv6 client counts by its /64) that failed authentications are charged to.
        """
        group = address_group(self.client_address(request))
        decision = await self.limiter.hit("ip", group, self.settings.rate_limit_per_ip)
        request.state.ip_rate_limit = decision
        if not decision.allowed:
            raise self._too_many(request, decision, "ip", "this address")
        failures = await self.limiter.check("auth_failures", group, self.settings.auth_failures_per_minute)
        if not failures.allowed:
            raise self._refuse(
                request, 429, "too_many_auth_failures",
                f"too many failed authentications from this address (at most {failures.limit} a minute); "
                f"retry in {failures.retry_after_s} s",
                "too_many_auth_failures", headers={"Retry-After": str(failures.retry_after_s)},
            )
        return group

    async def _identified(self, group: str, identify: Callable[[], T]) -> T:
        """`identify()`, charging a refusal (401) to the address group's failed-authentication budget."""
        try:
            return identify()
        except ApiError as exc:
            if exc.status == 401:
                await self.limiter.charge("auth_failures", group, self.settings.auth_failures_per_minute, 1)
            raise

    def _too_many(self, request: Request, decision: Decision, scope: str, who: str) -> ApiError:
        return self._refuse(
            request,
            429,
            "rate_limited",
            f"rate limit for {who} is {decision.limit} requests per minute; retry in {decision.retry_after_s} s",
            f"rate_limited_{scope}",
            headers=decision.headers(),
        )

    async def _admit_key(self, request: Request, principal: Principal) -> None:
        request.state.principal = principal
        self.metrics.key_requests.labels(key_id=principal.key_id).inc()
        self.ring.mark_used(principal.key_id)
        decision = await self.limiter.hit_key(principal.key_id, self.settings.rate_limit_per_key, self.settings.abnormal_key_per_minute)
        request.state.rate_limit = decision
        if not decision.allowed:
            raise self._too_many(request, decision, "key", f"key {principal.key_id!r}")

    def _key_refused(self, request: Request, state: str) -> ApiError:
        # One message for unknown, revoked and expired keys: a caller learns nothing about which keys exist.
        return self._refuse(
            request, 401, "invalid_api_key", "the API key is invalid, expired or revoked",
            KEY_STATE_REASONS.get(state, state), headers=_BEARER_CHALLENGE,
        )

    def _check_api_key(self, request: Request, raw: str) -> ApiKeyEntry:
        entry, state = self.ring.verify(raw)
        if entry is None or state != "active":
            raise self._key_refused(request, state)
        return entry

    def _bearer_principal(self, request: Request, allow_api_key: bool) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            what = "a bearer token from POST /api/auth" + (" or an API key" if allow_api_key else "")
            raise self._refuse(
                request, 401, "missing_credentials", f"send `Authorization: Bearer <token>` with {what}", "missing_credentials",
                headers=_BEARER_CHALLENGE,
            )
        if allow_api_key:
            entry, state = self.ring.verify(credential)
            if entry is not None:
                if state != "active":
                    raise self._key_refused(request, state)  # the same answer as /api/auth gives
                return Principal(key_id=entry.id, scopes=entry.scopes, via="api_key")
        if credential.count(".") != 2:
            if allow_api_key:
                raise self._key_refused(request, "unknown_key")
            raise self._refuse(request, 401, "invalid_token", "this route takes a bearer token from POST /api/auth, not an API key",
                               "malformed_token", headers=_BEARER_CHALLENGE)
        try:
            claims = self.tokens.verify(credential)
        except TokenError as exc:
            code = "token_expired" if exc.reason == "token_expired" else "invalid_token"
            raise self._refuse(request, 401, code, exc.message, exc.reason, headers=_BEARER_CHALLENGE) from None
        return Principal(key_id=claims.key_id, scopes=claims.scopes, via="jwt")

    # -- the interface the routes use --------------------------------------------------------
    async def issue_token(self, api_key: str, request: Request) -> dict[str, Any]:
        await self.ring.refresh()
        group = await self._admit_address(request)
        entry = await self._identified(group, lambda: self._check_api_key(request, api_key))
        await self._admit_key(request, Principal(key_id=entry.id, scopes=entry.scopes, via="api_key"))
        try:
            token, expires_in = self.tokens.issue(entry)
        except KeyFileError:
            log.error("no current JWT signing key; /api/auth cannot issue tokens")
            raise ApiError(503, "no_signing_key", "the service has no current token signing key; tell its operator") from None
        return {"token": token, "token_type": "bearer", "expires_in": expires_in}

    async def authenticate(self, request: Request, *, allow_api_key: bool) -> Principal:
        await self.ring.refresh()
        group = await self._admit_address(request)
        principal = await self._identified(group, lambda: self._bearer_principal(request, allow_api_key))
        await self._admit_key(request, principal)
        return principal

    def require_scope(self, request: Request, principal: Principal, scope: str) -> None:
        if scope not in principal.scopes:
            raise self._refuse(
                request, 403, "insufficient_scope", f"this route needs the {scope!r} scope; key {principal.key_id!r} lacks it",
                f"missing_scope_{scope}",
            )

    @asynccontextmanager
    async def key_usage(self, request: Request, principal: Principal) -> AsyncIterator[None]:
        """Hold one of the key's MAX_CONCURRENT_PER_KEY slots while the request is queued, generating and streaming.

        Refuses (429) while the key's token budget is spent. The tokens the answer used (`request.state.tokens`,
        prompt + completion) are charged when the request ends, so a key may overdraw by what its requests in
        flight use and then waits until its budget refills.
        """
        key_id, settings = principal.key_id, self.settings
        budget = await self.limiter.check("tokens", key_id, settings.rate_limit_tokens_per_key)
        if not budget.allowed:
            raise self._refuse(
                request, 429, "token_budget_exceeded",
                f"key {key_id!r} has used its {budget.limit} tokens a minute; retry in {budget.retry_after_s} s",
                "token_budget_exceeded", headers={"Retry-After": str(budget.retry_after_s)},
            )
        lease = await self.slots.acquire(key_id, settings.max_concurrent_per_key)
        if lease is None:
            self.metrics.rate_limited.labels(scope="key_concurrency").inc()
            raise self._refuse(
                request, 429, "key_concurrency_limit",
                f"key {key_id!r} already has {settings.max_concurrent_per_key} requests queued or in flight; "
                "retry when one has finished",
                "key_concurrency_limit", headers={"Retry-After": "1"},
            )
        try:
            yield
        finally:
            # Shielded: a client that went away cancels the request, but its slot and its tokens are still settled.
            with anyio.CancelScope(shield=True):
                await self.slots.release(lease)
                used = getattr(request.state, "tokens", None) or {}
                spent = int(used.get("prompt") or 0) + int(used.get("completion") or 0)
                if spent:
                    await self.limiter.charge("tokens", key_id, settings.rate_limit_tokens_per_key, spent)

    def rate_limit_headers(self, request: Request) -> dict[str, str]:
        decision: Decision | None = getattr(request.state, "rate_limit", None) or getattr(request.state, "ip_rate_limit", None)
        if decision is None:
            return {}
        headers = decision.headers()
        headers.pop("Retry-After", None)
        return headers

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

