"""The event loop stays free: huge prompts are tokenized, and key files reloaded, in worker threads.

Both tests run a real uvicorn server in this process (so they can see inside it) and call it over
HTTP like a probe would: a blocked loop shows as a probe that does not answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

import app.access.keyring as keyring_module
import app.factory as factory
from app.inference.prompts import PromptRenderer
from app.settings import Settings
from bench.waiting import wait_until
from tests.app.conftest import KeyFiles, build_security_app
from tests.e2e.server import MODEL_CACHE
from tests.live_server import calls_in_flight, live_server, wait_ready

BIG_PROMPT_CHARS = 1_000_000
HEALTHZ_P99_S = 0.050


def test_healthz_answers_within_50ms_p99_while_four_1mb_prompts_are_tokenized(
    tmp_path: Path, make_settings: Callable[..., Settings], keyfiles: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    (data_dir / "models").symlink_to(MODEL_CACHE, target_is_directory=True)
    settings = make_settings(data_dir=data_dir, max_body_bytes=8 * 1_048_576, warmup_prompts=("Hi",))
    rendering = calls_in_flight(monkeypatch, PromptRenderer, "render_now")
    sentence = "The lighthouse keeper counted every wave that broke on the rocks below. "
    bearer = {"Authorization": f"Bearer {keyfiles.raw['alice']}"}

    with live_server(factory.create_app(settings)) as url:
        wait_ready(url)

        def ask(i: int) -> httpx.Response:
            text = (f"Prompt {i}. " + sentence * (BIG_PROMPT_CHARS // len(sentence) + 1))[:BIG_PROMPT_CHARS]
            return httpx.post(
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": text}]},
                headers=bearer,
                timeout=300,
            )

        samples: list[float] = []
        with ThreadPoolExecutor(4) as pool:
            replies = [pool.submit(ask, i) for i in range(4)]
            wait_until("tokenization to start", rendering, 120, poll_s=0.005)  # the bodies are in
            with httpx.Client(base_url=url, timeout=30) as probe:
                while rendering() > 0 and len(samples) < 5000:
                    started = time.perf_counter()
                    assert probe.get("/healthz").status_code == 200
                    samples.append(time.perf_counter() - started)
            answers = [r.result() for r in replies]

    # Each prompt really went through the tokenizer: far over the model's context window.
    assert [a.json()["error"]["code"] for a in answers] == ["context_length_exceeded"] * 4
    assert len(samples) >= 20, f"only {len(samples)} probes fitted in the tokenization"
    samples.sort()
    p99 = samples[int(0.99 * (len(samples) - 1))]
    assert p99 < HEALTHZ_P99_S, (
        f"/healthz p99 {p99 * 1000:.1f} ms over {len(samples)} probes (max {samples[-1] * 1000:.1f} ms)"
    )


def test_a_slow_key_file_reload_never_stalls_the_event_loop(
    instant_reload: None, make_settings: Callable[..., Settings], keyfiles: KeyFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = build_security_app(make_settings())

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    in_reload, release = threading.Event(), threading.Event()
    load_contents = keyring_module.load_contents

    def slow_load(*args: Any, **kwargs: Any) -> Any:
        in_reload.set()
        release.wait(60)  # a KEK on a slow network filesystem, say
        return load_contents(*args, **kwargs)

    with live_server(app) as url:
        monkeypatch.setattr(keyring_module, "load_contents", slow_load)
        late = keyfiles.add("late")
        keyfiles.write()  # the next request reloads the key file
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(
                httpx.get, url + "/v1/models", headers={"Authorization": f"Bearer {late}"}, timeout=120
            )
            try:
                assert in_reload.wait(60), "the request never reloaded the key file"
                probe = httpx.get(url + "/healthz", timeout=10)  # a loop stuck in the reload would never answer
            finally:
                release.set()
            assert probe.status_code == 200
            assert pending.result().status_code == 200  # and the reload it waited for let the new key in
