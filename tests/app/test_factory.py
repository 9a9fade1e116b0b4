"""The app factory's lifespan: alive at once, ready only after load and warm-up, 503 + Retry-After before."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import app.factory as main
from app.settings import load_settings

KEY = "ck-dev-" + "0123456789abcdef" * 3


def _settings(tmp_path: Path):
    return load_settings({"APP_ENV": "development", "DEV_API_KEY": KEY, "DATA_DIR": str(tmp_path)})


def test_not_ready_while_loading_then_load_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def slow_failing_load(settings, hub_token):  # type: ignore[no-untyped-def]
        release.wait(30)
        raise FileNotFoundError("MODEL_PATH /models/missing does not exist")

    monkeypatch.setattr(main, "_load", slow_failing_load)
    fatal: list[str] = []
    app = main.create_app(_settings(tmp_path), on_fatal=fatal.append)
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        r = c.get("/readyz")
        assert r.status_code == 503 and r.headers["retry-after"]
        chat = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {KEY}"},
        )
        assert chat.status_code == 503, chat.text
        assert chat.headers["retry-after"] == "5"
        assert chat.json()["error"]["code"] == "model_loading"
        release.set()
        for _ in range(100):
            if fatal:
                break
            threading.Event().wait(0.05)
        assert fatal and "/models/missing" in fatal[0]
        assert c.get("/readyz").json()["error"]["message"] == "model failed to load"
        assert c.get("/healthz").status_code == 200  # a broken load is not a liveness failure
