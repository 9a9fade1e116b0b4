"""A real, local implementation of the AWS APIs the stack uses (KMS, S3, STS): moto's server, one per session.

moto (requirements-dev.txt) implements KMS Encrypt/Decrypt/GenerateDataKey with encryption contexts, S3 objects,
listings, versioning and lifecycle configurations, and STS, behind the same wire protocols as AWS: boto3 and the
aws CLI talk to it unchanged through AWS_ENDPOINT_URL. It listens on a loopback port; every test starts from an
empty account (`aws_env` resets it), and the server stops at the session's end.

A conftest.py imports the fixtures (`from tests.aws_server import aws_server, aws_env`).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.waiting import WaitTimedOut, exited, wait_until

START_TIMEOUT_S = 60.0
REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AwsServer:
    def __init__(self) -> None:
        self.port = _free_port()
        self.workdir = Path(tempfile.mkdtemp(prefix="clawbot-aws-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a client needs to use this server as AWS, and nothing of the machine's own AWS setup."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "AKIACLAWBOTTESTING00",
            "AWS_SECRET_ACCESS_KEY": "clawbot-testing-secret-access-key",
            "AWS_REGION": REGION,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_CONFIG_FILE": str(self.workdir / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/data.json", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        log = (self.workdir / "moto.log").open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_until(
                f"moto_server to answer on port {self.port}",
                self._answers,
                START_TIMEOUT_S,
                poll_s=0.1,
                give_up=exited(self.proc, "moto_server"),
                detail=lambda: self.log()[-3000:],
            )
        except WaitTimedOut:
            self.stop()
            raise

    def log(self) -> str:
        path = self.workdir / "moto.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


_shared: AwsServer | None = None


@pytest.fixture(scope="session")
def aws_server() -> Iterator[AwsServer]:
    """The session's server, started once however many modules import this fixture."""
    global _shared
    if _shared is None:
        _shared = AwsServer()
        _shared.start()
    yield _shared
    if _shared is not None:
        _shared.stop()
        _shared = None


@pytest.fixture
def aws_env(aws_server: AwsServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """This process (boto3) and the returned env (subprocesses) pointed at an empty local AWS account."""
    aws_server.reset()
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in aws_server.env.items():
        monkeypatch.setenv(name, value)
    yield dict(aws_server.env)
