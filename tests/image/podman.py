"""Podman for the image tests: a runtime setup that works on these machines, a Python base image assembled from
Debian packages (no registry is reachable here), and the chat and Redis images built from this checkout.

Each image is kept in podman's store under a tag derived from a hash of its inputs, so a second run reuses it, and
podman's layer cache makes a rebuild after an app/ change take seconds. The last build's figures (seconds, bytes)
are written to build/image/last-build.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "image"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
REDIS_CONTAINERFILE = Path(__file__).with_name("redis.Containerfile")
TOOLS = ("podman", "buildah", "runc", "debootstrap", "podman-compose")
BUILD_TIMEOUT_S = 1800.0
UID = 10001  # the image's user; mounted key files and data directories must be its own
PARIS = {
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "max_tokens": 32,
    "temperature": 0,
}

# crun fails on this kernel's hybrid cgroup layout, and podman's default ulimits (nofile 1048576) are above the hard
# limits here, so every podman call the tests make reads this instead of the distribution's defaults.
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""

# Debian 12's python3.11 and its venv module: what python:3.11-slim offers, from Debian's archive. debootstrap
# resolves dependencies only roughly, so python3-distutils (which provides python3.11-venv's python3.11-distutils)
# is named outright.
BASE_SUITE = "bookworm"
BASE_PACKAGES = ("python3.11", "python3.11-venv", "python3-distutils", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"


@dataclass(frozen=True)
class Podman:
    env: dict[str, str]

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} exited {result.returncode}:\n{result.stderr[-4000:]}")
        return result

    def logged(self, log: Path, *args: str, timeout: float = BUILD_TIMEOUT_S) -> None:
        """A long podman command (a build) with its output in `log`; a failure quotes the log's end."""
        with log.open("w") as out:
            code = subprocess.run(
                ["podman", *args], env=self.env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout
            ).returncode
        if code != 0:
            raise AssertionError(f"podman {args[0]} exited {code}; {log}:\n{log.read_text()[-6000:]}")

    def has_image(self, tag: str) -> bool:
        return self("image", "exists", tag, check=False).returncode == 0

    def image_bytes(self, tag: str) -> int:
        return int(self("image", "inspect", "--format", "{{.Size}}", tag).stdout)


def podman() -> Podman:
    """Podman with the runtime settings above, or a failure that says how to install what is missing."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} not installed: the image tests build and run the container image with "
            "Debian's podman, buildah, runc, debootstrap and podman-compose; `scripts/setup dev` (part of "
            "scripts/test) installs them"
        )
    if os.geteuid() != 0:
        pytest.fail("the image tests need root: debootstrap assembles the base image, and podman runs rootful")
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "containers.conf"
    if not conf.is_file() or conf.read_text() != CONTAINERS_CONF:
        conf.write_text(CONTAINERS_CONF)
    return Podman(env={**os.environ, "CONTAINERS_CONF": str(conf)})


def _digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        h.update(len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:16]


def debian_mirror() -> str:
    """The Debian archive this host's apt uses for BASE_SUITE (deb822 or one-line sources), else deb.debian.org."""
    apt = Path("/etc/apt")
    for path in sorted(apt.glob("sources.list.d/*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z][\w-]*):\s*(.+)$", stanza, re.M))
            if "deb" in fields.get("Types", "").split() and BASE_SUITE in fields.get("Suites", "").split():
                return fields["URIs"].split()[0]
    for path in [apt / "sources.list", *sorted(apt.glob("sources.list.d/*.list"))]:
        text = path.read_text() if path.is_file() else ""
        found = re.search(rf"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+{BASE_SUITE}\s", text, re.M)
        if found:
            return found.group(1)
    return DEFAULT_MIRROR


def base_image(p: Podman) -> str:
    """A Python 3.11 base made with debootstrap and `podman import`; reused while its recipe is unchanged."""
    tag = f"localhost/clawbot-test-base:{_digest(BASE_SUITE, *BASE_PACKAGES)}"
    if p.has_image(tag):
        return tag
    rootfs = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    try:
        log = CACHE / "debootstrap.log"
        with log.open("w") as out:
            code = subprocess.run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    f"--include={','.join(BASE_PACKAGES)}",
                    BASE_SUITE,
                    str(rootfs),
                    debian_mirror(),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=BUILD_TIMEOUT_S,
            ).returncode
        if code != 0:
            raise AssertionError(f"debootstrap exited {code}; {log}:\n{log.read_text()[-4000:]}")
        # Downloaded packages and apt's indexes are no part of an image.
        for leftover in [*rootfs.glob("var/cache/apt/archives/*.deb"), *rootfs.glob("var/lib/apt/lists/*_*")]:
            leftover.unlink()
        imported = subprocess.run(
            [
                "sh",
                "-c",
                'tar -C "$1" -c . | podman import --message "debootstrap $2 minbase" - "$3"',
                "sh",
                str(rootfs),
                BASE_SUITE,
                tag,
            ],
            env=p.env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        if imported.returncode != 0:
            raise AssertionError(f"podman import failed: {imported.stderr[-4000:]}")
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    return tag


def torch_wheels() -> Path:
    """A directory holding the torch wheel this host installs: the CPU-only build its pip configuration points at.

    PyPI's own torch wheel for x86_64 is the CUDA build (several GB more); the test image does not need it.
    """
    pin = re.search(r"^torch==(\S+)", (ROOT / "requirements.txt").read_text(), re.M)
    assert pin, "requirements.txt pins no torch==VERSION"
    wheels = CACHE / "wheels"
    if not any(wheels.glob(f"torch-{pin.group(1)}*.whl")):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--only-binary=:all:",
                "-d",
                str(wheels),
                f"torch=={pin.group(1)}",
            ],
            check=True,
            timeout=BUILD_TIMEOUT_S,
        )
    return wheels


def _context_files() -> list[Path]:
    """What the Dockerfile reads from the checkout (.dockerignore lets in app/ and requirements.txt)."""
    app = [f for f in sorted((ROOT / "app").rglob("*")) if f.is_file() and "__pycache__" not in f.parts]
    return [ROOT / "Dockerfile", ROOT / ".dockerignore", ROOT / "requirements.txt", *app]


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    size_bytes: int
    build_seconds: float | None  # None when the image was already in the store


def app_image(p: Podman, base: str) -> BuiltImage:
    """The chat image from this checkout's Dockerfile, FROM `base`, with the CPU torch wheel offered first."""
    wheels = torch_wheels()
    parts: list[str | bytes] = [base, *sorted(w.name for w in wheels.glob("*.whl"))]
    for f in _context_files():
        parts += [str(f.relative_to(ROOT)), f.read_bytes()]
    tag = f"localhost/clawbot-test:{_digest(*parts)}"
    seconds = None
    if not p.has_image(tag):
        args = [
            "build",
            "--layers",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--build-context",
            f"wheels={wheels}",
            "--tag",
            tag,
        ]
        if CA_BUNDLE.is_file():  # outbound TLS here is re-signed by a proxy; the bundle is mounted, never copied in
            args += ["--secret", f"id=ca-certificates,src={CA_BUNDLE}"]
        started = time.monotonic()
        p.logged(CACHE / "app-build.log", *args, str(ROOT))
        seconds = round(time.monotonic() - started, 1)
    built = BuiltImage(tag=tag, size_bytes=p.image_bytes(tag), build_seconds=seconds)
    (CACHE / "last-build.json").write_text(json.dumps(built.__dict__, indent=2) + "\n")
    return built


def redis_image(p: Podman, base: str) -> str:
    """redis-server from Debian's package on the same base, standing in for the registry's redis image."""
    tag = f"localhost/clawbot-test-redis:{_digest(base, REDIS_CONTAINERFILE.read_bytes())}"
    if not p.has_image(tag):
        p.logged(
            CACHE / "redis-build.log",
            "build",
            "--layers",
            "--build-arg",
            f"BASE_IMAGE={base}",
            "--file",
            str(REDIS_CONTAINERFILE),
            "--tag",
            tag,
            str(REDIS_CONTAINERFILE.parent),
        )
    return tag


@dataclass
class Container:
    """A container whose API port 18789 is published on 127.0.0.1:`port`."""

    p: Podman
    name: str
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def logs(self) -> str:
        result = self.p("logs", self.name, check=False)
        return (result.stdout + result.stderr)[-6000:]

    def state(self) -> str:
        return self.p("container", "inspect", "--format", "{{.State.Status}}", self.name, check=False).stdout.strip()

    def wait_ready(self, timeout: float = 600) -> None:
        def stopped() -> str | None:
            state = self.state()
            return None if state in ("created", "running") else f"container {self.name} is {state or 'gone'}"

        wait_until(
            f"{self.name} to be ready",
            lambda: httpx.get(self.url + "/readyz", timeout=3).status_code == 200,
            timeout,
            poll_s=0.5,
            ignoring=(httpx.HTTPError,),
            give_up=stopped,
            detail=self.logs,
        )

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        return self.p("exec", self.name, *command, check=False)

    def exit_code(self, timeout: float = 120) -> int:
        return int(self.p("wait", self.name, timeout=timeout).stdout.strip())

    def remove(self) -> None:
        self.p("rm", "--force", "--time", "0", self.name, check=False)


def own_by_service_user(*paths: Path) -> None:
    """Mounted files keep their host owner: hand them to the image's UID (as a Secret's fsGroup does on Kubernetes)."""
    for path in paths:
        os.chown(path, UID, UID)


def printed_key(output: str) -> str:
    """The API key `python -m app.keys add` prints once."""
    keys = re.findall(r"^(ck-\S+)$", output, re.M)
    assert keys, output
    return keys[-1]
