"""Scopes on every route: one table decides them (app.api.auth.ROUTE_RULES), and a walk over the app's routes holds
each to its rule: anonymous 401, a key without the scope 403, a key with it gets past authentication."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient

from app.api.auth import ROUTE_RULES, Caller, RouteGuard, check_route_rules, route_paths
from app.api.errors import install_error_handlers
from tests.app.conftest import KeyFiles

CHAT_BODY = {"messages": [{"role": "user", "content": "hi"}]}
# For each scope: a key that holds it and one that does not (conftest: alice = chat, ops = admin only).
HOLDER = {"chat": "alice", "admin": "ops"}
LACKING = {"chat": "ops", "admin": "alice"}


def test_the_table_names_exactly_the_routes_the_app_serves(modelless_app: Callable[..., FastAPI]) -> None:
    assert route_paths(modelless_app()) == set(ROUTE_RULES)


def test_an_app_with_a_route_the_table_does_not_name_is_not_built() -> None:
    app = FastAPI()

    @app.get("/v1/forgotten")
    async def forgotten() -> dict[str, str]:
        return {}

    with pytest.raises(RuntimeError, match="/v1/forgotten"):
        check_route_rules(app)


def test_a_route_without_a_rule_is_refused_rather_than_served() -> None:
    app = FastAPI(dependencies=[RouteGuard])
    install_error_handlers(app)

    @app.get("/v1/forgotten")
    async def forgotten(principal: Caller) -> dict[str, str]:
        return {"served": "to anyone"}

    r = TestClient(app, raise_server_exceptions=False).get("/v1/forgotten")
    assert r.status_code == 500 and "anyone" not in r.text


def test_every_route_asks_for_its_scope(service: TestClient, keyfiles: KeyFiles) -> None:
    tokens = {k: service.post("/api/auth", json={"api_key": keyfiles.raw[k]}).json()["token"] for k in ("alice", "ops")}
    walked = set()
    for route in iter_route_contexts(service.app.routes):  # type: ignore[attr-defined]
        path, rule = str(route.path), ROUTE_RULES[str(route.path)]
        url = path.replace("{asset}", "app.js")
        for method in sorted((route.methods or set()) - {"HEAD"}):
            walked.add((method, path))

            def call(key_id: str | None = None, method: str = method, url: str = url, rule: Any = rule) -> int:
                credential = (
                    None if key_id is None else tokens[key_id] if rule.credentials == "jwt" else keyfiles.raw[key_id]
                )
                headers = {} if credential is None else {"Authorization": f"Bearer {credential}"}
                r = service.request(method, url, json=CHAT_BODY if method == "POST" else None, headers=headers)
                if r.status_code == 403:
                    assert (
                        r.json()["error"]["code"] == "insufficient_scope"
                        and repr(rule.scope) in r.json()["error"]["message"]
                    )
                return r.status_code

            if rule.scope is None:
                assert call() not in (401, 403), (method, path)
                continue
            assert call() == 401, (method, path)
            assert call(LACKING[rule.scope]) == 403, (method, path, "a key without the scope got in")
            assert call(HOLDER[rule.scope]) not in (401, 403), (method, path)
    assert (
        ("POST", "/v1/chat/completions") in walked and ("GET", "/admin/keys") in walked and ("GET", "/docs") in walked
    )


def test_an_admin_only_key_cannot_chat_with_a_token_either(service: TestClient, keyfiles: KeyFiles) -> None:
    token = service.post("/api/auth", json={"api_key": keyfiles.raw["ops"]}).json()["token"]
    bearer = {"Authorization": f"Bearer {token}"}
    for r in (
        service.post("/api/chat", json=CHAT_BODY, headers=bearer),
        service.post("/v1/chat/completions", json=CHAT_BODY, headers=bearer),
        service.get("/v1/models", headers=bearer),
    ):
        assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", r.text
    assert service.get("/admin/keys", headers=bearer).status_code == 200
