"""ALLOWED_CIDRS / BLOCKED_CIDRS for every route of a listener, as pure ASGI middleware, before any route runs.

It decides the client's address once (X-Forwarded-For only from TRUSTED_PROXIES, see app.access.netrules)
and leaves it in the request's context (app.api.context) for the rate limits and the logs. A refused address gets 403 in the
contract's shape, is counted in `clawbot_auth_failures{reason}` and written to the audit trail.

Kubernetes probes come from the kubelet on the node's address, which is not a client CIDR, so the API
listener exempts exactly the probe paths (`PROBE_PATHS`); they answer "ok"/"ready" and nothing else.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from app.access.audit import AuditLog
from app.access.netrules import NetRules
from app.api.context import scope_context
from app.api.errors import ApiError, error_response
from app.observability.metrics import Metrics

PROBE_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})


class NetworkRulesMiddleware:
    def __init__(
        self, app: ASGIApp, rules: NetRules, metrics: Metrics, exempt_paths: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self.rules = rules
        self.metrics = metrics
        self.exempt_paths = exempt_paths
        self.audit = AuditLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        peer = scope.get("client")
        forwarded = [v.decode("latin-1") for k, v in scope.get("headers") or [] if k.lower() == b"x-forwarded-for"]
        client = self.rules.client_address(peer[0] if peer else None, forwarded)
        scope_context(scope).client_ip = client
        verdict = self.rules.check(client)
        if verdict.allowed or scope.get("path") in self.exempt_paths:
            await self.app(scope, receive, send)
            return
        reason = f"ip_{verdict.reason}"
        self.metrics.auth_failures.labels(reason=reason).inc()
        self.audit.log(None, str(scope.get("path", "")), 403, client, reason=reason)
        refusal = ApiError(403, "address_not_allowed", f"requests from {client or 'this address'} are not allowed")
        await error_response(refusal)(scope, receive, send)
