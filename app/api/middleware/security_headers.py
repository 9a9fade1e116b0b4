"""Browser-hardening response headers (CSP, framing, sniffing, referrer) as pure ASGI middleware.

Every response gets the strict policy: the console is plain same-origin HTML/JS/CSS with no
inline code, and a JSON or SSE response rendered by a browser must not run anything either.
The one exception is FastAPI's interactive docs (`/docs`, `/redoc`): their HTML is an inline
bootstrap script that loads Swagger UI / ReDoc from cdn.jsdelivr.net, so the strict policy
would leave them blank. Rather than weaken the console's policy for everyone, those paths get
their own, named policy that allows exactly that CDN and inline bootstrap; they hold no
credentials of their own and can still not be framed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

STRICT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DOCS_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
    "font-src https://fonts.gstatic.com; img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "connect-src 'self'; worker-src blob:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
DOCS_PATHS: tuple[str, ...] = ("/docs", "/redoc")

_FIXED_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
_OWNED = {b"content-security-policy", *(name for name, _ in _FIXED_HEADERS)}


def policy_for(path: str, docs_paths: tuple[str, ...] = DOCS_PATHS) -> str:
    """The Content-Security-Policy a response for `path` gets."""
    for prefix in docs_paths:
        if path == prefix or path.startswith(prefix + "/"):
            return DOCS_CSP
    return STRICT_CSP


class SecurityHeadersMiddleware:
    """Sets the CSP and framing/sniffing/referrer headers on every HTTP response, replacing any the app set."""

    def __init__(self, app: ASGIApp, docs_paths: tuple[str, ...] = DOCS_PATHS) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = policy_for(scope.get("path", ""), self.docs_paths).encode()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _OWNED]
                message["headers"] = [*kept, (b"content-security-policy", csp), *_FIXED_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
