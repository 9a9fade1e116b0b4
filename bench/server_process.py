"""The ClawBot server as the benchmarks run it: `python -m app` in development mode on free loopback ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx

from app.access.keyfile import ApiKeyRecord, JwtKeyRecord, KeyFile, new_api_key, new_secret, now_iso, seal_key_file
from app.access.keyring import write_private
from app.settings import Settings, load_settings
from bench.waiting import WaitTimedOut, exited, wait_until

ROOT = Path(__file__).resolve().parents[1]
DEV_KEY = "ck-bench-" + "0123456789abcdef" * 3


def bench_settings(data_dir: Path, extra_env: dict[str, str] | None = None) -> Settings:
    """The server's settings (same model, quantization, batch size) with development auth and our DATA_DIR."""
    env = {
        **os.environ,
        **(extra_env or {}),
        "APP_ENV": "development",
        "DEV_API_KEY": DEV_KEY,
        "DATA_DIR": str(data_dir),
    }
    return load_settings(env)


def write_key_files(directory: Path, scopes: dict[str, tuple[str, ...]]) -> tuple[dict[str, str], dict[str, str]]:
    """A KEK and a sealed key file in `directory` with one API key per entry of `scopes`: the production env that
    points `python -m app` at them, and the raw keys by id."""
    kek, raw = new_secret(), {key_id: new_api_key() for key_id in scopes}
    ring = KeyFile(
        api_keys=tuple(ApiKeyRecord(id=k, secret=raw[k], scopes=scopes[k], not_before=now_iso(-60)) for k in scopes),
        jwt_keys=(JwtKeyRecord(kid="jwt-1", secret=new_secret(), not_before=now_iso(-60)),),
    )
    write_private(directory / "kek", kek + "\n")
    write_private(directory / "keys.json", seal_key_file(ring, kek))
    env = {
        "APP_ENV": "production",
        "DEV_API_KEY": "",
        "API_KEY_PATH": str(directory / "keys.json"),
        "KEK_PATH": str(directory / "kek"),
    }
    return env, raw


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    settings: Settings, log_path: Path, extra_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `python -m app`; /metrics gets a free port of its own so runs beside other servers never collide on 9464."""
    port = free_port()
    env = {
        **os.environ,
        **(extra_env or {}),
        "APP_ENV": "development",
        "DEV_API_KEY": DEV_KEY,
        "DATA_DIR": str(settings.data_dir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "PYTHONUNBUFFERED": "1",
    }
    out = log_path.open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "app"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def wait_ready(
    proc: subprocess.Popen[bytes], url: str, log_path: Path, timeout: float = 600, path: str = "/readyz"
) -> None:
    """Poll `path` until it answers 200; fail with the log's tail if the process exits first."""
    program = proc.args[0] if isinstance(proc.args, Sequence) else proc.args
    try:
        wait_until(
            f"{url}{path} to answer 200",
            lambda: httpx.get(url + path, timeout=2).status_code == 200,
            timeout,
            poll_s=0.5,
            ignoring=(httpx.HTTPError,),
            give_up=exited(proc, str(program)),
            detail=lambda: f"{log_path}:\n{log_path.read_text(errors='replace')[-3000:]}",
        )
    except WaitTimedOut as e:
        raise SystemExit(str(e)) from None


def stop_server(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
