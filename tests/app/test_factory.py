"""The app factory's lifespan: alive at once, ready after load and warm-up, draining on SIGTERM, dead when the engine dies.

Also what only a ready model can show: bounded stop strings in both APIs.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import app.factory as main
from app.settings import Settings, load_settings
from bench.waiting import wait_until
from tests.app.inference.toy import Spy
from tests.e2e.server import MODEL_CACHE
from tests.live_server import live_server

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


# -- with the embedded model -------------------------------------------------------------------------
CHAT = {"messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]}


def _model_settings(tmp_path: Path, **env: str) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir(exist_ok=True)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(MODEL_CACHE, target_is_directory=True)
    return load_settings(
        {"APP_ENV": "development", "DEV_API_KEY": KEY, "DATA_DIR": str(data_dir), "MAX_TOKENS": "256", **env}
    )


def _wait_ready(get: Callable[[str], httpx.Response], timeout_s: float = 300) -> None:
    wait_until("the model to become ready", lambda: get("/readyz").status_code == 200, timeout_s)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    with TestClient(main.create_app(_model_settings(tmp_path_factory.mktemp("svc")))) as c:
        _wait_ready(c.get)
        yield c


@pytest.mark.parametrize(
    "stop, message",
    [
        (["a", "b", "c", "d", "e"], "stop accepts at most 4 sequences, got 5"),
        (["x" * 65], "stop sequences may be at most 64 characters each, got one of 65"),
    ],
)
def test_stop_strings_are_bounded_in_both_apis(service: TestClient, stop: list[str], message: str) -> None:
    token = service.post("/api/auth", json={"api_key": KEY}).json()["token"]
    for route, bearer in (("/v1/chat/completions", KEY), ("/api/chat", token)):
        r = service.post(
            route, json={**CHAT, "stop": stop, "max_tokens": 4}, headers={"Authorization": f"Bearer {bearer}"}
        )
        assert r.status_code == 400, (route, r.text)
        assert message in r.json()["error"]["message"], r.text
    fine = service.post(
        "/v1/chat/completions",
        json={**CHAT, "stop": ["y" * 64] * 4, "max_tokens": 2},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert fine.status_code == 200, fine.text


def test_draining_refuses_new_chats_with_503_and_retry_after_and_drops_readiness_not_liveness(tmp_path: Path) -> None:
    with TestClient(main.create_app(_model_settings(tmp_path))) as c:
        _wait_ready(c.get)
        assert c.portal is not None
        c.portal.call(main.begin_draining, c.app)  # what SIGTERM does, on the event loop
        chat = c.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        assert chat.status_code == 503, chat.text
        assert chat.json()["error"]["code"] == "shutting_down" and chat.headers["retry-after"] == "1"
        ready = c.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == "draining"
        assert c.get("/healthz").status_code == 200


def test_a_dead_engine_answers_its_waiters_fails_liveness_and_readiness_and_says_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = main.create_app(_model_settings(tmp_path))
    bearer = {"Authorization": f"Bearer {KEY}"}
    # A fault in the model code (not out of memory) once two requests share the batch.
    cuda_fault = RuntimeError("CUDA error: an illegal memory access was encountered")
    with (
        caplog.at_level(logging.ERROR, logger="clawbot.engine"),
        live_server(app) as url,
        httpx.Client(base_url=url, timeout=120, headers=bearer) as http,
    ):
        _wait_ready(http.get)
        assert http.get("/healthz").status_code == 200
        engine = app.state.engine
        engine.model = Spy(engine.model, fail=lambda rows, columns: cuda_fault if rows >= 2 else None)
        body = {**CHAT, "max_tokens": 200, "ignore_eos": True}
        with (
            ThreadPoolExecutor(1) as pool,
            http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as stream,
        ):
            assert stream.status_code == 200
            events = stream.iter_lines()
            assert next(e for e in events if '"content"' in e)  # generating
            blocking = pool.submit(http.post, "/v1/chat/completions", json=body)  # joins the batch: the engine dies
            rest = [e.removeprefix("data: ") for e in events if e.startswith("data: ")]
            answer = blocking.result()
        assert json.loads(rest[-2])["error"]["code"] == "engine_failed", rest[-3:]
        assert rest[-1] == "[DONE]"
        assert answer.status_code == 503 and answer.json()["error"]["code"] == "engine_failed", answer.text
        assert answer.headers["retry-after"] == "1"
        health = http.get("/healthz")
        assert health.status_code == 503 and health.json()["error"]["code"] == "engine_failed"
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["error"]["message"] == "engine failed"
        refused = http.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "engine_failed"
    assert app.state.metrics.registry.get_sample_value("clawbot_engine_failures_total", {"reason": "RuntimeError"}) == 1
    logged = [r for r in caplog.records if r.name == "clawbot.engine"]
    assert logged and logged[0].error == "RuntimeError: CUDA error: an illegal memory access was encountered"  # type: ignore[attr-defined]
    assert "lighthouse" not in caplog.text
