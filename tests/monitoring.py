"""Real Prometheus, Alertmanager, promtool and amtool (Debian's packages) and an SMTP sink, for tests.

`scripts/setup dev` installs `prometheus` (with promtool) and `prometheus-alertmanager` (with amtool); a test
that needs them fails, rather than skips, when they are missing. Servers bind loopback ports, keep their data in
the test's own directory, and are stopped by the context managers even when the test fails.
"""

from __future__ import annotations

import email
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from bench.waiting import exited, wait_until
from tests.e2e.server import free_port

START_TIMEOUT_S = 30.0
# Debian names the Alertmanager binary prometheus-alertmanager; upstream tarballs call it alertmanager.
BINARIES = {
    "prometheus": ("prometheus",),
    "promtool": ("promtool",),
    "alertmanager": ("prometheus-alertmanager", "alertmanager"),
    "amtool": ("amtool",),
}


def binary(tool: str) -> str:
    for name in BINARIES[tool]:
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(
        f"{tool} is not installed; the test command installs it (scripts/setup dev runs "
        "`apt-get install prometheus prometheus-alertmanager`). Install it and run the tests again."
    )


def run_tool(tool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary(tool), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def write_yaml(path: Path, doc: Any) -> Path:
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Daemon:
    """A started server process with its loopback HTTP address and log file."""

    proc: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def daemon(tool: str, config: dict[str, Any], workdir: Path, extra_args: list[str]) -> Iterator[Daemon]:
    """Start `tool` with `config` on a free loopback port, wait for /-/ready, stop it on the way out."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config_path = write_yaml(workdir / f"{tool}.yml", config)
    args = [f"--config.file={config_path}", f"--web.listen-address=127.0.0.1:{port}", *extra_args]
    log_path = workdir / f"{tool}.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen([binary(tool), *args], cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
    d = Daemon(proc, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until(
            f"{tool} to be ready",
            lambda: httpx.get(d.url + "/-/ready", timeout=2).status_code == 200,
            START_TIMEOUT_S,
            ignoring=(httpx.HTTPError,),
            give_up=exited(proc, tool),
            detail=d.log,
        )
        yield d
    finally:
        d.stop()


def prometheus(config: dict[str, Any], workdir: Path) -> AbstractContextManager[Daemon]:
    return daemon("prometheus", config, workdir, [f"--storage.tsdb.path={workdir / 'data'}"])


def alertmanager(config: dict[str, Any], workdir: Path) -> AbstractContextManager[Daemon]:
    # An empty cluster address: a single Alertmanager that opens no gossip port.
    return daemon("alertmanager", config, workdir, [f"--storage.path={workdir / 'data'}", "--cluster.listen-address="])


@dataclass
class Mailbox:
    """What the SMTP sink received: one parsed message per DATA command, safe to read from the test thread."""

    host: str
    port: int
    messages: list[Message] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def smarthost(self) -> str:
        return f"{self.host}:{self.port}"

    def received(self) -> list[Message]:
        with self.lock:
            return list(self.messages)


class _Collect:
    def __init__(self, box: Mailbox) -> None:
        self.box = box

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # aiosmtpd's hook name
        content = envelope.original_content or b""
        with self.box.lock:
            self.box.messages.append(email.message_from_bytes(content))
        return "250 Message accepted for delivery"


@contextmanager
def smtp_sink() -> Iterator[Mailbox]:
    box = Mailbox("127.0.0.1", free_port())
    controller = Controller(_Collect(box), hostname=box.host, port=box.port, ready_timeout=START_TIMEOUT_S)
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


def body_text(message: Message) -> str:
    """Subject plus every decoded text part of a mail (Alertmanager's default mail is HTML, quoted-printable)."""
    parts = [str(message.get("Subject", ""))]
    for part in message.walk():
        if part.get_content_maintype() == "text":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                parts.append(payload.decode(part.get_content_charset() or "utf-8", errors="replace"))
    return "\n".join(parts)


def query(prom: Daemon, expr: str) -> list[dict[str, Any]]:
    """An instant PromQL query; fails on a query error (a broken expression is a failure, not 'no data')."""
    r = httpx.get(prom.url + "/api/v1/query", params={"query": expr}, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return list(body["data"]["result"])
