"""Process lifecycle under load: SIGTERM drains in-flight requests; a bad model path exits non-zero with a clear log."""
from __future__ import annotations

import concurrent.futures as cf
import signal
import time
from pathlib import Path

import httpx

from tests.e2e.server import start_server

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def _chat(url: str, key: str) -> int:
    r = httpx.post(
        url + "/v1/chat/completions",
        json={"messages": PROMPT, "max_tokens": 48, "temperature": 0, "ignore_eos": True},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    return r.status_code


def test_sigterm_under_load_finishes_every_accepted_request(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data")
    try:
        srv.wait_ready()
        with cf.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(_chat, srv.url, srv.api_key) for _ in range(8)]
            deadline = time.time() + 60
            while time.time() < deadline:  # wait until generation is really under way
                metrics = srv.metrics()
                if "clawbot_generated_tokens_total 0.0" not in metrics and "clawbot_generated_tokens_total" in metrics:
                    break
                time.sleep(0.1)
            srv.proc.send_signal(signal.SIGTERM)
            statuses = [f.result(timeout=120) for f in futures]
        assert statuses == [200] * 8
        assert srv.proc.wait(60) == 0
    finally:
        srv.stop(signal.SIGKILL)


def test_unloadable_model_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    srv = start_server(tmp_path / "data", MODEL_PATH=str(tmp_path / "no-such-model"))
    try:
        code = srv.proc.wait(120)
    finally:
        srv.stop(signal.SIGKILL)
    assert code == 1, srv.log()[-2000:]
    assert "exiting: model failed to load" in srv.log()
    assert "no-such-model" in srv.log()
    assert "Traceback" not in srv.log()
