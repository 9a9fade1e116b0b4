"""Fixtures for the app tests: real key files, a real redis-server, a small app wired to AccessControl and Storage,
and the embedded model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.access.control import AccessControl
from app.access.keyfile import ApiKeyRecord, JwtKeyRecord, KeyFile, new_api_key, new_secret, now_iso, seal_key_file
from app.access.keyring import write_private
from app.access.netrules import NetRules
from app.api.auth import Caller, RouteGuard, issue_token
from app.api.context import context_of
from app.api.errors import install_error_handlers, rate_limit_headers
from app.api.middleware.body_limit import BodyLimitMiddleware
from app.api.middleware.network_rules import NetworkRulesMiddleware
from app.api.routes import admin
from app.observability.metrics import Metrics, build_metrics
from app.settings import Settings
from app.storage.stores import Storage
from tests.redis_server import RedisServer


@dataclass
class KeyFiles:
    """A KEK and a key file on disk, with the raw keys the test may present (the service never sees these)."""

    key_path: Path
    kek_path: Path
    kek: str
    raw: dict[str, str] = field(default_factory=dict)
    records: dict[str, ApiKeyRecord] = field(default_factory=dict)
    jwt: list[JwtKeyRecord] = field(default_factory=list)

    def write(self) -> None:
        ring = KeyFile(api_keys=tuple(self.records.values()), jwt_keys=tuple(self.jwt))
        write_private(self.key_path, seal_key_file(ring, self.kek))

    def add(self, key_id: str, scopes: tuple[str, ...] = ("chat",), **kw: Any) -> str:
        raw = new_api_key()
        self.raw[key_id] = raw
        self.records[key_id] = ApiKeyRecord(
            id=key_id, secret=raw, scopes=scopes, not_before=kw.pop("not_before", now_iso(-60)), **kw
        )
        return raw

    def revoke(self, key_id: str) -> None:
        rec = self.records[key_id]
        self.records[key_id] = ApiKeyRecord(
            rec.id, rec.secret, rec.scopes, rec.not_before, rec.expires_at, revoked=True
        )

    def jwt_secret(self, kid: str) -> str:
        return next(k.secret for k in self.jwt if k.kid == kid)


@pytest.fixture
def keyfiles(tmp_path: Path) -> KeyFiles:
    kf = KeyFiles(key_path=tmp_path / "secrets" / "keys.json", kek_path=tmp_path / "secrets" / "kek", kek=new_secret())
    write_private(kf.kek_path, kf.kek + "\n")
    kf.add("alice", ("chat",))
    kf.add("root", ("chat", "admin"))
    kf.add("gone", ("chat",))
    kf.revoke("gone")
    kf.add("stale", ("chat",), expires_at=now_iso(-3600))
    kf.add("later", ("chat",), not_before=now_iso(3600))
    kf.jwt.append(JwtKeyRecord(kid="jwt-1", secret=new_secret(), not_before=now_iso(-60)))
    kf.write()
    return kf


@pytest.fixture
def make_settings(tmp_path: Path, keyfiles: KeyFiles) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        base = Settings(
            app_env="production",
            data_dir=tmp_path / "data",
            api_key_path=keyfiles.key_path,
            kek_path=keyfiles.kek_path,
        )
        return base.with_overrides(**overrides)

    return build


@pytest.fixture
def instant_reload(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check the key file's mtime on every use instead of at most once a second."""
    from app.access import keyring as keyring_module

    monkeypatch.setattr(keyring_module, "RELOAD_CHECK_INTERVAL_S", 0.0)


@pytest.fixture
def metrics() -> Metrics:
    return build_metrics()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def metric_value(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return float(value or 0.0)


class AuthBody(BaseModel):
    api_key: str


def build_security_app(settings: Settings, metrics: Metrics | None = None) -> FastAPI:
    """The service's auth surface without a model: /api/auth, a JWT route, an API route, and the admin router,
    behind the same route rules (app.api.auth) and network rules as the service."""
    m = metrics or build_metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.storage = await Storage.open(settings, m)
        app.state.access = await AccessControl.create(settings, m, app.state.storage.link)
        try:
            yield
        finally:
            await app.state.access.close()
            await app.state.storage.close()

    app = FastAPI(lifespan=lifespan, dependencies=[RouteGuard], redirect_slashes=False)
    app.state.settings = settings
    app.state.metrics = m
    app.state.access = app.state.storage = None
    install_error_handlers(app)

    @app.post("/api/auth")
    async def auth(body: AuthBody, request: Request) -> dict:
        issued = await issue_token(request, body.api_key)
        return {"token": issued.token, "token_type": issued.token_type, "expires_in": issued.expires_in}

    @app.post("/api/chat")
    async def chat(request: Request, principal: Caller) -> Any:
        body = await request.json()
        return JSONResponse(
            {"key_id": principal.key_id, "via": principal.via, "scopes": sorted(principal.scopes), "echo": body},
            headers=_limit_headers(request),
        )

    @app.get("/v1/models")
    async def models(request: Request, principal: Caller) -> dict:
        return {"key_id": principal.key_id, "via": principal.via, "client": context_of(request).client_ip}

    app.include_router(admin.router)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(NetworkRulesMiddleware, rules=NetRules.for_api(settings), metrics=m)
    return app


def _limit_headers(request: Request) -> dict[str, str]:
    """The rate-limit headers of the bucket that admitted the request (the key's, else the address's)."""
    context = context_of(request)
    decision = context.key_limit or context.address_limit
    return {} if decision is None else {k: v for k, v in rate_limit_headers(decision).items() if k != "Retry-After"}


@pytest.fixture(scope="session")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The embedded model, loaded once for every test that runs it (or only needs its tokenizer)."""
    from app.inference.loader import load_model

    # The same converted-model cache as the end-to-end tests (tests/e2e/server.py), so the GGUF is converted once.
    cache = Path(__file__).resolve().parents[2] / "build" / "test-models"
    cache.mkdir(parents=True, exist_ok=True)
    data_dir = tmp_path_factory.mktemp("engine-data")
    (data_dir / "models").symlink_to(cache, target_is_directory=True)
    # fp32: on CPU its greedy output does not depend on the batch, which the engine tests compare exactly
    # (bf16, what DTYPE=auto picks on a CPU with native bf16, rounds differently at other batch shapes).
    return load_model("embedded:smollm2-135m-instruct", data_dir, "none", dtype="float32", progress=False)
