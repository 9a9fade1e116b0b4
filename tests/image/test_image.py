"""The chat image, built from this checkout and run the way production runs it: read-only root filesystem, UID 10001,
tini as PID 1, production mode with mounted key files (API_KEY_PATH, KEK_PATH)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import free_port
from tests.image.podman import CACHE, PARIS, ROOT, BuiltImage, Container, Podman, own_by_service_user, printed_key

KEYS_IN_CONTAINER = "/run/clawbot/keys"
EMBEDDED = "embedded:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A KEK and a key file made with `python -m app.keys`, owned by the image's user; (directory, API key)."""
    keys = tmp_path_factory.mktemp("image-keys")
    cli = [sys.executable, "-m", "app.keys"]
    subprocess.run([*cli, "init-kek", "--kek-file", str(keys / "kek")], cwd=ROOT, check=True, capture_output=True)
    added = subprocess.run(
        [
            *cli,
            "add",
            "--id",
            "image-test",
            "--key-file",
            str(keys / "api-keys"),
            "--kek-file",
            str(keys / "kek"),
            "--scopes",
            "chat,benchmark",
        ],  # benchmark: ignore_eos
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    keys.chmod(0o700)
    own_by_service_user(keys, keys / "kek", keys / "api-keys")
    return keys, printed_key(added.stdout)


@pytest.fixture(scope="module")
def data_dir(pm: Podman, image: BuiltImage, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/app/data with the embedded model converted by the image itself, with no network at all."""
    data = tmp_path_factory.mktemp("image-data")
    own_by_service_user(data)
    pm(
        "run",
        "--rm",
        "--network",
        "none",
        "--read-only",
        "--volume",
        f"{data}:/app/data",
        image.tag,
        "python",
        "-m",
        "app.load_model",
        "--model-path",
        EMBEDDED,
        timeout=900,
    )
    return data


def start(pm: Podman, image: BuiltImage, keys: Path, data: Path, *env: str) -> Container:
    c = Container(pm, f"clawbot-image-test-{uuid.uuid4().hex[:8]}", free_port())
    settings = [
        f"API_KEY_PATH={KEYS_IN_CONTAINER}/api-keys",
        f"KEK_PATH={KEYS_IN_CONTAINER}/kek",
        "MAX_TOKENS=256",
        *env,
    ]
    pm(
        "run",
        "--detach",
        "--name",
        c.name,
        "--read-only",
        "--publish",
        f"127.0.0.1:{c.port}:18789",
        "--volume",
        f"{keys}:{KEYS_IN_CONTAINER}:ro",
        "--volume",
        f"{data}:/app/data",
        *(arg for setting in settings for arg in ("--env", setting)),
        image.tag,
    )
    return c


@pytest.fixture(scope="module")
def service(pm: Podman, image: BuiltImage, keys: tuple[Path, str], data_dir: Path) -> Iterator[Container]:
    c = start(pm, image, keys[0], data_dir)
    try:
        c.wait_ready()
        yield c
    finally:
        c.remove()


def test_the_image_is_under_5_gb_and_its_build_figures_are_recorded(image: BuiltImage) -> None:
    assert image.size_bytes < 5 * 10**9, f"{image.tag} is {image.size_bytes / 1e9:.2f} GB"
    recorded = json.loads((CACHE / "last-build.json").read_text())
    assert recorded["tag"] == image.tag and recorded["size_bytes"] == image.size_bytes


def test_the_embedded_model_converts_inside_the_image_with_no_network(data_dir: Path) -> None:
    # The GGUF's blocks are packed for this device (QUANTIZATION=auto): models/smollm2-135m-instruct-<form>-<device>.
    packed = [d for d in (data_dir / "models").glob("smollm2-135m-instruct*") if d.is_dir()]
    assert len(packed) == 1, sorted(p.name for p in (data_dir / "models").iterdir())
    model = packed[0]
    assert (model / "model.safetensors").stat().st_uid == 10001
    assert json.loads((model / ".clawbot-model.json").read_text())["source"].endswith(".gguf")


def _sh_as_root(pm: Podman, image: BuiltImage, script: str) -> str:
    """What `script` prints in a throwaway container of the image, run as root so nothing is hidden from it."""
    return pm("run", "--rm", "--user", "0", "--entrypoint", "sh", image.tag, "-c", script).stdout


def test_nothing_from_the_build_stays_in_the_image(pm: Podman, image: BuiltImage) -> None:
    # The CA bundle was a build secret, the wheels a bind mount, the pip cache a cache mount: none may
    # leave a file behind (buildah keeps the empty mount points).
    leftovers = _sh_as_root(pm, image, "find /run/secrets /run/build /root/.cache -type f 2>/dev/null; true")
    assert leftovers.strip() == ""
    env = pm("image", "inspect", "--format", "{{json .Config.Env}}", image.tag).stdout
    assert not re.search(r"(KEY|KEK|TOKEN|PASSWORD|SECRET)\w*=", env), env


def test_the_gguf_kernel_is_built_in_and_the_compiler_is_gone(pm: Podman, image: BuiltImage) -> None:
    # The service never compiles: the kernel the image built is found by name, and g++ left with its layer.
    out = _sh_as_root(
        pm, image, "ls /opt/clawbot/kernels; ls /opt/clawbot; for c in g++ gcc; do command -v $c; done; true"
    )
    assert re.search(r"^clawbot_gguf-[0-9a-f]{16}\.so$", out, re.M), out
    assert "kernel-src" not in out and "/g++" not in out and "/gcc" not in out, out


def test_the_service_serves_the_blocks_with_the_built_in_kernel(service: Container) -> None:
    placed = [line for line in service.logs().splitlines() if "gguf tensors placed" in line]
    assert placed and "blocks (q4 fp16)" in placed[-1], placed
    assert "kernels are not available" not in service.logs()


def test_runs_as_uid_10001_under_tini_with_only_data_and_tmp_writable(service: Container) -> None:
    assert service.exec("id", "-u").stdout.strip() == "10001"
    pid1 = service.exec("cat", "/proc/1/cmdline").stdout.split("\0")
    assert pid1[:4] == ["/usr/bin/tini", "--", "python", "-m"], pid1
    refused = service.exec("touch", "/app/app/planted.py")
    assert refused.returncode != 0 and "Read-only file system" in refused.stderr
    for writable in ("/app/data/probe", "/tmp/probe"):
        assert service.exec("touch", writable).returncode == 0, writable


def test_answers_paris_in_production_mode_with_the_mounted_key(service: Container, keys: tuple[Path, str]) -> None:
    with httpx.Client(base_url=service.url, timeout=120) as client:
        assert client.post("/v1/chat/completions", json=PARIS).status_code == 401
        r = client.post("/v1/chat/completions", json=PARIS, headers={"Authorization": f"Bearer {keys[1]}"})
    assert r.status_code == 200, r.text
    assert "Paris" in r.json()["choices"][0]["message"]["content"]


def test_sigterm_during_a_generation_lets_it_finish_and_the_container_exits_0(
    pm: Podman, image: BuiltImage, keys: tuple[Path, str], data_dir: Path
) -> None:
    # A grace period no busy test machine outlasts: this is about the signal reaching the server through tini.
    c = start(pm, image, keys[0], data_dir, "SHUTDOWN_GRACE_SECONDS=600")
    try:
        c.wait_ready()
        body = {
            "messages": [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}],
            "max_tokens": 32,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        events: list[str] = []
        with httpx.stream(
            "POST",
            c.url + "/v1/chat/completions",
            json=body,
            timeout=120,
            headers={"Authorization": f"Bearer {keys[1]}"},
        ) as r:
            assert r.status_code == 200
            lines = (line for line in r.iter_lines() if line.startswith("data: "))
            for line in lines:  # wait for the first generated text: the generation is under way
                events.append(line)
                if line != "data: [DONE]" and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                    break
            pm("kill", "--signal", "TERM", c.name)
            events += list(lines)
        assert events[-1] == "data: [DONE]", events[-3:]
        usage = json.loads(events[-2][6:])["usage"]
        assert usage["completion_tokens"] == 32, usage
        assert c.exit_code(timeout=600) == 0, c.logs()
    finally:
        c.remove()
