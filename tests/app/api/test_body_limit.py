"""Request body cap: 413 in the contract's shape, whether the size is declared or the body arrives chunked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from app.api.errors import install_error_handlers
from app.api.middleware.body_limit import BodyLimitMiddleware

LIMIT = 2048


def _app() -> tuple[FastAPI, list[int]]:
    seen: list[int] = []
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, Any]:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body), "sha": hash(body)}

    app.add_middleware(BodyLimitMiddleware, max_body_bytes=LIMIT)
    return app, seen


def _assert_413(r: Any) -> None:
    assert r.status_code == 413
    assert r.json() == {
        "error": {
            "type": "request_too_large",
            "code": "request_too_large",
            "message": f"the request body is larger than the {LIMIT}-byte limit (MAX_BODY_BYTES)",
        }
    }


def test_bodies_up_to_the_limit_pass_intact() -> None:
    app, seen = _app()
    body = b"x" * LIMIT
    with TestClient(app) as c:
        r = c.post("/echo", content=body)
    assert r.status_code == 200 and r.json() == {"bytes": LIMIT, "sha": hash(body)}
    assert seen == [LIMIT]


def test_declared_oversize_is_refused_before_the_app_runs() -> None:
    app, seen = _app()
    with TestClient(app) as c:
        _assert_413(c.post("/echo", content=b"x" * (LIMIT + 1)))
    assert seen == []


def test_chunked_body_without_content_length_is_refused() -> None:
    app, seen = _app()

    def chunks() -> Iterator[bytes]:
        for _ in range(10):
            yield b"y" * 512

    with TestClient(app) as c:
        r = c.post("/echo", content=chunks())
        assert r.request.headers.get("transfer-encoding") == "chunked" and "content-length" not in r.request.headers
        _assert_413(r)
    assert seen == []


def test_a_lying_content_length_does_not_get_past_the_cap() -> None:
    messages = [
        {"type": "http.request", "body": b"z" * 1500, "more_body": True},
        {"type": "http.request", "body": b"z" * 1500, "more_body": False},
    ]
    sent: list[dict[str, Any]] = []
    called: list[bool] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        called.append(True)

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "headers": [(b"content-length", b"100")]}
    asyncio.run(BodyLimitMiddleware(inner, max_body_bytes=LIMIT)(scope, receive, send))
    assert called == []
    assert sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_too_large"


def test_the_app_can_still_see_a_disconnect_after_the_body() -> None:
    messages = [{"type": "http.request", "body": b"{}", "more_body": False}, {"type": "http.disconnect"}]
    observed: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        observed.append((await receive())["type"])
        observed.append((await receive())["type"])

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        pass

    scope = {"type": "http", "method": "POST", "path": "/x", "headers": []}
    asyncio.run(BodyLimitMiddleware(inner, max_body_bytes=LIMIT)(scope, receive, send))
    assert observed == ["http.request", "http.disconnect"]
