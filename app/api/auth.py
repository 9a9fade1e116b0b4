"""Who may call which route: the one table of route rules, and the dependency that enforces it on every route.

`ROUTE_RULES` names, for every route of the API listener, the scope a caller needs, how the caller
proves who it is, whether the request holds one of its key's concurrency slots, and the errors
particular to the route (for the OpenAPI schema). `route_caller` runs on every route (create_app
installs it as an app-wide dependency) and looks the rule up by the matched route, so a route cannot
forget its check; create_app refuses to build an app with a route the table does not name.
Handlers that need the caller take `principal: Caller` (the same dependency, run once per request).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Depends, FastAPI, Request
from fastapi.routing import iter_route_contexts

from app.access.context import Principal, RequestContext
from app.access.control import AccessControl, IssuedToken
from app.api.context import context_of
from app.api.errors import ApiError

# none: no credentials; api_key_in_body: POST /api/auth checks the key itself; jwt: a token from /api/auth;
# jwt_or_key: a token or the API key itself, as OpenAI clients send it.
Credentials = Literal["none", "api_key_in_body", "jwt", "jwt_or_key"]


@dataclass(frozen=True)
class RouteRule:
    scope: str | None = None  # the scope the key needs; None with credentials "none" or "api_key_in_body"
    credentials: Credentials = "none"
    key_slot: bool = False  # counts against MAX_CONCURRENT_PER_KEY and the key's token budget while it runs
    errors: tuple[int, ...] = ()  # statuses only this route answers (documented in the OpenAPI schema)


PUBLIC = RouteRule()
ADMIN = RouteRule(scope="admin", credentials="jwt_or_key")

ROUTE_RULES: dict[str, RouteRule] = {
    "/healthz": RouteRule(errors=(503,)),  # 503 only once the engine has died (liveness fails, the pod restarts)
    "/readyz": RouteRule(errors=(503,)),
    "/": PUBLIC,
    "/console/{asset}": RouteRule(errors=(404,)),
    "/openapi.json": PUBLIC,
    "/docs": PUBLIC,
    "/docs/oauth2-redirect": PUBLIC,
    "/redoc": PUBLIC,
    "/api/auth": RouteRule(credentials="api_key_in_body"),
    "/api/chat": RouteRule(scope="chat", credentials="jwt", key_slot=True, errors=(503, 504)),
    "/v1/chat/completions": RouteRule(scope="chat", credentials="jwt_or_key", key_slot=True, errors=(404, 503, 504)),
    "/v1/responses": RouteRule(scope="chat", credentials="jwt_or_key", key_slot=True, errors=(404, 503, 504)),
    "/v1/models": RouteRule(scope="chat", credentials="jwt_or_key"),
    "/admin/conversations": ADMIN,
    "/admin/conversations/export": ADMIN,
    "/admin/keys": ADMIN,
    "/admin/stats": ADMIN,
}


def route_paths(app: FastAPI) -> set[str]:
    """Every route path the app serves, routers included."""
    return {str(rc.path) for rc in iter_route_contexts(app.routes) if rc.path is not None}


def check_route_rules(app: FastAPI) -> None:
    """Refuse an app with a route that has no rule: an unlisted route would be refused on every call."""
    missing = sorted(route_paths(app) - set(ROUTE_RULES))
    if missing:
        raise RuntimeError(f"routes without an access rule in app.api.auth.ROUTE_RULES: {', '.join(missing)}")


def rule_of(request: Request) -> RouteRule:
    path = getattr(request.scope.get("route"), "path", None)
    rule = ROUTE_RULES.get(path) if isinstance(path, str) else None
    if rule is None:
        raise LookupError(f"route {path!r} has no rule in app.api.auth.ROUTE_RULES")  # refused (500), never let through
    return rule


def access_of(request: Request) -> AccessControl:
    access: AccessControl | None = getattr(request.app.state, "access", None)
    if access is None:
        # The lifespan has not run (or failed): refuse rather than let a request through unauthenticated.
        raise ApiError(503, "starting", "the service is starting; retry shortly", headers={"Retry-After": "1"})
    return access


def caller_context(request: Request, access: AccessControl) -> RequestContext:
    """The request's context, with the client's address (decided by the network rules, or here for an app without them)."""
    context = context_of(request)
    if context.client_ip is None:
        peer = request.client.host if request.client else None
        context.client_ip = access.netrules.client_address(peer, request.headers.getlist("x-forwarded-for"))
    return context


async def route_caller(request: Request) -> AsyncIterator[Principal | None]:
    """Apply the route's rule: authenticate, check the scope, and hold a key slot until the response has been sent."""
    rule = rule_of(request)
    if rule.scope is None:
        yield None
        return
    access = access_of(request)
    context = caller_context(request, access)
    principal = await access.authenticate(
        context, request.headers.get("authorization", ""), allow_api_key=rule.credentials == "jwt_or_key"
    )
    access.require_scope(principal, rule.scope)
    if not rule.key_slot:
        yield principal
        return
    async with access.key_usage(context, principal):
        yield principal


async def issue_token(request: Request, api_key: str) -> IssuedToken:
    """POST /api/auth's work: the key checked (within the address's limits) and traded for a token."""
    access = access_of(request)
    return await access.issue_token(api_key, caller_context(request, access))


RouteGuard = Depends(route_caller)
Caller = Annotated[Principal, RouteGuard]
