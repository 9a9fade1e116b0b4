"""Security as the app uses it: startup in production and development, the admin API, reload on SIGHUP, no leaks."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.access.control import AccessControl
from app.access.key_material import KeyMaterialError
from app.observability.metrics import build_metrics
from app.settings import Settings
from app.storage.conversations import Exchange
from bench.waiting import wait_until_async
from tests.app.conftest import KeyFiles, build_security_app


def _create(settings: Settings) -> AccessControl:
    async def run() -> AccessControl:
        access = await AccessControl.create(settings, build_metrics())
        await access.close()
        return access

    return asyncio.run(run())


@pytest.mark.parametrize("which", ["api_key_path", "kek_path"])
def test_production_refuses_to_start_without_its_key_files(
    make_settings: Callable[..., Settings], tmp_path: Path, which: str
) -> None:
    settings = make_settings(**{which: tmp_path / "nope"})
    name = "API_KEY_PATH" if which == "api_key_path" else "KEK_PATH"
    with pytest.raises(KeyMaterialError, match=f"{name} '.*nope' does not exist"):
        _create(settings)


def test_production_refuses_a_key_file_that_does_not_decrypt(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles
) -> None:
    keyfiles.kek_path.write_text("a-different-but-long-enough-kek-value-0123456789")
    with pytest.raises(KeyMaterialError, match="sealed under KEK") as err:
        _create(make_settings())
    assert keyfiles.kek not in str(err.value)


def test_development_makes_a_local_kek_and_key_and_prints_the_key_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(app_env="development", data_dir=tmp_path / "data")
    with TestClient(build_security_app(settings)) as c:
        out = capsys.readouterr().out
        assert out.count("KEY=") == 1
        key = out.split("KEY=", 1)[1].split()[0]
        r = c.post("/api/auth", json={"api_key": key})
        assert (
            r.status_code == 200 and c.get("/admin/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        )
    dev = tmp_path / "data" / "dev-keys"
    for name in ("kek", "keys.json"):
        assert (dev / name).stat().st_mode & 0o777 == 0o600, name
    assert key not in (dev / "keys.json").read_text()
    with TestClient(build_security_app(settings)) as c:  # a restart keeps the key and does not print it again
        assert capsys.readouterr().out.count("KEY=") == 0
        assert c.post("/api/auth", json={"api_key": key}).status_code == 200


def test_development_accepts_dev_api_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dev_key = "ck-dev-" + "0123456789abcdef" * 3
    settings = Settings(app_env="development", data_dir=tmp_path, dev_api_key=dev_key)
    with TestClient(build_security_app(settings)) as c:
        token = c.post("/api/auth", json={"api_key": dev_key}).json()["token"]
        assert c.get("/admin/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.post("/api/auth", json={"api_key": dev_key + "x"}).status_code == 401
    assert dev_key not in capsys.readouterr().out


@pytest.fixture
def admin_client(make_settings: Callable[..., Settings]) -> TestClient:
    return TestClient(build_security_app(make_settings()))


def test_admin_routes_need_the_admin_scope(admin_client: TestClient, keyfiles: KeyFiles) -> None:
    with admin_client as c:
        for path in ("/admin/keys", "/admin/conversations", "/admin/conversations/export"):
            r = c.get(path, headers={"Authorization": f"Bearer {keyfiles.raw['alice']}"})
            assert r.status_code == 403 and r.json()["error"]["code"] == "insufficient_scope", path
            assert c.get(path).status_code == 401, path


def test_admin_lists_keys_without_secrets_and_with_last_use(admin_client: TestClient, keyfiles: KeyFiles) -> None:
    with admin_client as c:
        root = {"Authorization": f"Bearer {keyfiles.raw['root']}"}
        listing = c.get("/admin/keys", headers=root)
        assert listing.status_code == 200
        keys = {k["id"]: k for k in listing.json()["keys"]}
        assert set(keys) == {"alice", "root", "gone", "stale", "later"}
        assert keys["root"]["scopes"] == ["admin", "chat"] and keys["root"]["last_used"] is not None
        assert keys["alice"]["last_used"] is None
        assert (keys["gone"]["status"], keys["stale"]["status"], keys["later"]["status"]) == (
            "revoked",
            "expired",
            "not_yet_valid",
        )
        assert set(keys["alice"]) == {"id", "scopes", "not_before", "expires_at", "status", "last_used"}
        for raw in keyfiles.raw.values():
            assert raw not in listing.text


def test_admin_pages_filters_and_exports_conversations(admin_client: TestClient, keyfiles: KeyFiles) -> None:
    with admin_client as c:
        store = c.app.state.storage.conversations  # type: ignore[attr-defined]
        for i in range(5):
            store.record_sync(
                Exchange(
                    f"r{i}",
                    "alice" if i < 3 else "bob",
                    "/api/chat",
                    [{"role": "user", "content": f"q{i}"}],
                    f"a{i}",
                    {"prompt_tokens": 1, "completion_tokens": 1},
                    0.1,
                    time.time() + i,
                )
            )
        root = {"Authorization": f"Bearer {keyfiles.raw['root']}"}
        page = c.get("/admin/conversations", params={"page": 1, "page_size": 2}, headers=root).json()
        assert page["total"] == 5 and page["page"] == 1 and [e["request_id"] for e in page["items"]] == ["r4", "r3"]
        alice = c.get("/admin/conversations", params={"key_id": "alice", "page_size": 10}, headers=root).json()
        assert alice["total"] == 3 and {e["key_id"] for e in alice["items"]} == {"alice"}
        assert (
            alice["items"][0]["messages"] == [{"role": "user", "content": "q2"}] and alice["items"][0]["answer"] == "a2"
        )
        bad = c.get("/admin/conversations", params={"page_size": 100000}, headers=root)
        assert bad.status_code == 400 and "error" in bad.json()
        export = c.get("/admin/conversations/export", params={"key_id": "bob"}, headers=root)
        assert export.status_code == 200 and export.headers["content-type"].startswith("application/x-ndjson")
        assert [json.loads(line)["request_id"] for line in export.text.splitlines()] == ["r3", "r4"]


def test_sighup_reloads_the_key_file(make_settings: Callable[..., Settings], keyfiles: KeyFiles) -> None:
    async def run() -> None:
        security = await AccessControl.create(make_settings(), build_metrics())
        try:
            stat = keyfiles.key_path.stat()
            new_key = keyfiles.add("hup")
            keyfiles.write()
            os.utime(keyfiles.key_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            security.ring._mtime = security.ring._stat()
            assert security.ring.verify(new_key)[0] is None
            os.kill(os.getpid(), signal.SIGHUP)

            async def reloaded() -> bool:  # once the loop has run the handler
                await security.ring.refresh()  # what every request does first
                return security.ring.verify(new_key)[0] is not None

            await wait_until_async("SIGHUP to reload the key file", reloaded, 30)
        finally:
            await security.close()

    asyncio.run(run())


def test_successful_flows_log_no_credential(
    make_settings: Callable[..., Settings], keyfiles: KeyFiles, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG), TestClient(build_security_app(make_settings())) as c:
        token = c.post("/api/auth", json={"api_key": keyfiles.raw["root"]}).json()["token"]
        assert c.get("/admin/keys", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert c.get("/v1/models", headers={"Authorization": f"Bearer {keyfiles.raw['alice']}"}).status_code == 200
    everything = caplog.text + "".join(repr(vars(r)) for r in caplog.records)
    for secret in (
        token,
        token.split(".")[2],
        keyfiles.raw["root"],
        keyfiles.raw["alice"],
        keyfiles.jwt_secret("jwt-1"),
        keyfiles.kek,
    ):
        assert secret not in everything
