"""Security headers: the strict CSP and anti-framing headers on every response, the docs' own policy on /docs."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.api.middleware.security_headers import DOCS_CSP, STRICT_CSP, SecurityHeadersMiddleware, policy_for

FIXED = {"x-frame-options": "DENY", "x-content-type-options": "nosniff", "referrer-policy": "no-referrer"}


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/page")
    async def page() -> HTMLResponse:
        # An app-set policy must not survive next to (or instead of) the middleware's.
        return HTMLResponse(
            "<p>hi</p>", headers={"Content-Security-Policy": "default-src *", "X-Frame-Options": "ALLOWALL"}
        )

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def events() -> AsyncIterator[str]:
            yield "data: 1\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    app.add_middleware(SecurityHeadersMiddleware)
    return app


def _directives(policy: str) -> dict[str, list[str]]:
    out = {}
    for part in policy.split(";"):
        name, *values = part.split()
        out[name] = values
    return out


def test_strict_policy_on_pages_api_streams_and_errors() -> None:
    client = TestClient(_app())
    for path in ("/page", "/stream", "/openapi.json", "/no-such-page"):
        r = client.get(path)
        assert r.headers.get_list("content-security-policy") == [STRICT_CSP], path
        for name, value in FIXED.items():
            assert r.headers.get_list(name) == [value], (path, name)
    assert client.get("/stream").text.endswith("data: [DONE]\n\n")  # the wrapper leaves the body alone


def test_strict_policy_forbids_inline_code_third_parties_and_framing() -> None:
    d = _directives(STRICT_CSP)
    assert d["default-src"] == ["'none'"]
    assert d["script-src"] == ["'self'"] and d["style-src"] == ["'self'"] and d["connect-src"] == ["'self'"]
    assert d["frame-ancestors"] == ["'none'"] and d["base-uri"] == ["'none'"] and d["form-action"] == ["'none'"]
    assert not any("unsafe" in v or v.startswith("http") for values in d.values() for v in values)


def test_docs_get_their_own_policy_and_nothing_else_does() -> None:
    assert policy_for("/docs") == policy_for("/docs/oauth2-redirect") == policy_for("/redoc") == DOCS_CSP
    assert policy_for("/") == policy_for("/docsearch") == policy_for("/console/app.js") == STRICT_CSP
    assert _directives(DOCS_CSP)["frame-ancestors"] == ["'none'"]  # the relaxed page still cannot be framed


def _allowed(policy: str, directive: str, url: str) -> bool:
    sources = _directives(policy).get(directive) or _directives(policy)["default-src"]
    parts = urlsplit(url)
    if not parts.scheme:
        return "'self'" in sources
    return f"{parts.scheme}://{parts.netloc}" in sources


def test_docs_policy_lets_fastapis_own_docs_pages_load() -> None:
    client = TestClient(_app())
    for path, needs_inline_script in (("/docs", True), ("/redoc", False)):
        r = client.get(path)
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == DOCS_CSP
        html = r.text
        for src in re.findall(r'<script[^>]+src="([^"]+)"', html):
            assert _allowed(DOCS_CSP, "script-src", src), (path, src)
        for href in re.findall(
            r'<link[^>]+rel="stylesheet"[^>]*href="([^"]+)"|<link[^>]+href="([^"]+)"[^>]*rel="stylesheet"', html
        ):
            url = next(h for h in href if h)
            assert _allowed(DOCS_CSP, "style-src", url), (path, url)
        if needs_inline_script:
            assert re.search(r"<script>\s*\S", html) and "'unsafe-inline'" in _directives(DOCS_CSP)["script-src"]
