"""Starts `python -m app` as a real process on a free port, with the embedded model, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.waiting import exited, wait_until

ROOT = Path(__file__).resolve().parents[2]
MODEL_CACHE = ROOT / "build" / "test-models"  # converted once per checkout, shared by every server the tests start
DEV_KEY = "ck-test-" + "a1b2c3d4" * 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    data_dir: Path
    log_path: Path
    api_key: str = DEV_KEY
    env: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def metrics(self) -> str:
        return httpx.get(self.metrics_url, timeout=10).text

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=120, **kw)  # type: ignore[arg-type]

    def wait_ready(self, timeout: float = 300) -> None:
        wait_until(
            "the server to be ready",
            lambda: httpx.get(self.url + "/readyz", timeout=2).status_code == 200,
            timeout,
            poll_s=0.25,
            ignoring=(httpx.HTTPError,),
            give_up=exited(self.proc, "the server"),
            detail=lambda: self.log()[-4000:],
        )

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(data_dir: Path, **env_overrides: str) -> Server:
    data_dir.mkdir(parents=True, exist_ok=True)
    MODEL_CACHE.mkdir(parents=True, exist_ok=True)
    models = data_dir / "models"
    if not models.exists():
        models.symlink_to(MODEL_CACHE, target_is_directory=True)
    port, metrics_port = free_port(), free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("APP_", "MODEL_", "REDIS_"))},
        "APP_ENV": "development",
        "DEV_API_KEY": DEV_KEY,
        "DATA_DIR": str(data_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(metrics_port),
        "MAX_TOKENS": "",  # unset: the embedded model's own cap (256, app.inference.loader), which the tests rely on
        "PYTHONUNBUFFERED": "1",
        **env_overrides,
    }
    log_path = data_dir / f"server-{port}.log"
    out = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return Server(proc=proc, port=port, metrics_port=metrics_port, data_dir=data_dir, log_path=log_path, env=env)


@contextmanager
def running_server(data_dir: Path, **env_overrides: str) -> Iterator[Server]:
    """A started server, once it is ready; stopped on the way out (what a module's server fixture yields)."""
    srv = start_server(data_dir, **env_overrides)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()
