"""Serve an ASGI app with a real uvicorn server on a loopback port, in a background thread, for one test.

For tests that must see the service as a client does (a stalled event loop, a dropped
connection) while still reaching into the process (a patched tokenizer, a blocked reload).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
import uvicorn

from bench.waiting import WaitTimedOut, wait_until
from tests.e2e.server import free_port

START_TIMEOUT_S = 60.0


@contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Yields the base URL once the server listens (its lifespan has started); stops it on exit."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, server_header=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"live-server-{port}", daemon=True)
    thread.start()
    try:
        wait_until(
            f"the test server on port {port} to start",
            lambda: server.started,
            START_TIMEOUT_S,
            poll_s=0.02,
            give_up=lambda: None if thread.is_alive() else "its thread ended",
        )
    except WaitTimedOut:
        server.should_exit = True
        raise
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(START_TIMEOUT_S)


def wait_ready(url: str, timeout_s: float = 300) -> None:
    """Poll /readyz until the model has loaded and warmed up."""
    wait_until(f"{url} to be ready", lambda: httpx.get(url + "/readyz", timeout=10).status_code == 200, timeout_s)


def calls_in_flight(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> Callable[[], int]:
    """Wrap `owner.name` (a method or function) so the test can ask how many calls of it are running right now."""
    running = [0]
    lock = threading.Lock()
    original = getattr(owner, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
        try:
            return original(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(owner, name, counted)
    return lambda: running[0]
