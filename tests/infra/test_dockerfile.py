"""The image recipe: multi-stage, CUDA runtime, non-root, port 18789, data and model paths, no secrets copied in."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_multi_stage_on_a_cuda_runtime() -> None:
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\w+))?", DOCKERFILE, re.M)
    assert len(stages) >= 2
    assert re.search(r"^ARG CUDA_BASE=nvidia/cuda:[\w.\-]+-runtime-", DOCKERFILE, re.M)
    assert "COPY --from=build" in DOCKERFILE


def test_runs_as_the_uid_the_deployment_expects_and_serves_18789() -> None:
    assert re.search(r"^USER 10001(:10001)?$", DOCKERFILE, re.M)
    assert re.search(r"^EXPOSE 18789$", DOCKERFILE, re.M)
    assert 'CMD ["python", "-m", "app"]' in DOCKERFILE
    assert "/app/models" in DOCKERFILE and "/app/data" in DOCKERFILE


def test_no_secret_goes_into_the_image() -> None:
    assert not re.search(r"(API_KEY|KEK|TOKEN|PASSWORD)\w*=", DOCKERFILE)
    ignore = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*"  # everything is excluded unless listed after it
    assert "!app/" in ignore and not any(p.startswith("!Pulumi") or "data" in p for p in ignore if p.startswith("!"))
