"""The single-host path: compose.yaml brought up with podman-compose (Debian's 1.0.3) the way
docs/getting-started/compose.md says, with keys made by the image's own CLI, answering a chat request with Redis
beside it."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port
from tests.image.podman import PARIS, ROOT, BuiltImage, Container, Podman, own_by_service_user, printed_key


def make_keys(pm: Podman, image: str, keys: Path) -> str:
    """The documented key step: the image's `python -m app.keys` writes the KEK and key file into ./keys."""
    keys.mkdir(mode=0o700)
    own_by_service_user(keys)
    cli = [
        "run",
        "--rm",
        "--read-only",
        "--network",
        "none",
        "--volume",
        f"{keys}:/keys",
        image,
        "python",
        "-m",
        "app.keys",
    ]
    pm(*cli, "init-kek", "--kek-file", "/keys/kek")
    added = pm(*cli, "add", "--id", "ops", "--key-file", "/keys/api-keys", "--kek-file", "/keys/kek")
    return printed_key(added.stdout)


class Compose:
    def __init__(self, pm: Podman, env: dict[str, str]) -> None:
        self.project = f"clawbot-test-{uuid.uuid4().hex[:8]}"
        self.env = {**pm.env, **env}

    def __call__(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["podman-compose", "--project-name", self.project, "--file", str(ROOT / "compose.yaml"), *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        output = result.stdout[-3000:] + result.stderr[-3000:]
        assert result.returncode == 0, f"podman-compose {' '.join(args)}:\n{output}"
        return result

    def container(self, service: str) -> str:
        return f"{self.project}_{service}_1"  # podman-compose 1.0.3's naming


@pytest.fixture(scope="module")
def stack(
    pm: Podman, image: BuiltImage, redis: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Compose, Container, str, int]]:
    """`compose up -d` of compose.yaml with the test images; (compose, chat container, API key, metrics port)."""
    keys = tmp_path_factory.mktemp("compose") / "keys"
    api_key = make_keys(pm, image.tag, keys)
    port, metrics_port = free_port(), free_port()
    compose = Compose(
        pm,
        {
            "CLAWBOT_IMAGE": image.tag,
            "REDIS_IMAGE": redis,
            "CLAWBOT_KEYS_DIR": str(keys),
            "CLAWBOT_BIND_ADDRESS": "127.0.0.1",
            "CLAWBOT_PORT": str(port),
            "CLAWBOT_METRICS_PORT": str(metrics_port),
            "MAX_TOKENS": "256",
        },
    )
    chat = Container(pm, compose.container("clawbot"), port)
    try:
        compose("up", "--detach")
        chat.wait_ready()
        yield compose, chat, api_key, metrics_port
    finally:
        subprocess.run(
            [
                "podman-compose",
                "--project-name",
                compose.project,
                "--file",
                str(ROOT / "compose.yaml"),
                "down",
                "--volumes",
            ],
            env=compose.env,
            cwd=ROOT,
            capture_output=True,
            timeout=300,
        )
        pm("network", "rm", f"{compose.project}_default", check=False)  # podman-compose 1.0.3's down leaves it


def test_the_compose_stack_answers_a_chat_request_through_redis(
    pm: Podman, stack: tuple[Compose, Container, str, int]
) -> None:
    compose, chat, api_key, _ = stack
    with httpx.Client(base_url=chat.url, timeout=120) as client:
        r = client.post("/v1/chat/completions", json=PARIS, headers={"Authorization": f"Bearer {api_key}"})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
    # Rate-limit counters and the response cache went to the redis service, reached by its compose name.
    keys_in_redis = pm("exec", compose.container("redis"), "redis-cli", "dbsize").stdout.strip()
    assert int(keys_in_redis) > 0


def test_the_api_is_on_the_chosen_address_and_metrics_on_loopback_only(
    pm: Podman, stack: tuple[Compose, Container, str, int]
) -> None:
    compose, chat, _, metrics_port = stack
    published = pm("port", chat.name).stdout.split("\n")
    assert sorted(filter(None, published)) == [
        f"18789/tcp -> 127.0.0.1:{chat.port}",
        f"9464/tcp -> 127.0.0.1:{metrics_port}",
    ]
    assert "clawbot_requests_total" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    assert pm("port", compose.container("redis")).stdout.strip() == ""


def test_the_containers_run_read_only_with_rotated_json_logs(
    pm: Podman, stack: tuple[Compose, Container, str, int]
) -> None:
    compose, chat, _, _ = stack
    for name in (chat.name, compose.container("redis")):
        fmt = "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.LogConfig.Type}} {{.HostConfig.LogConfig.Size}}"
        assert pm("container", "inspect", "--format", fmt, name).stdout.split() == ["true", "json-file", "10MB"], name
    assert chat.exec("id", "-u").stdout.strip() == "10001"


def test_the_healthcheck_passes_once_the_model_is_ready(pm: Podman, stack: tuple[Compose, Container, str, int]) -> None:
    _, chat, _, _ = stack
    assert pm("healthcheck", "run", chat.name, check=False).returncode == 0, chat.logs()
