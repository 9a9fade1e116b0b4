"""Synthesizes the dev and prod stacks once per session under Pulumi's mocks; tests read the objects and outputs."""
from __future__ import annotations

from typing import Any

import pytest

from infra.synth import Synthesis, synthesize


@pytest.fixture(scope="session")
def prod() -> Synthesis:
    return synthesize("prod")


@pytest.fixture(scope="session")
def dev() -> Synthesis:
    return synthesize("dev")


def chat_container(s: Synthesis) -> dict[str, Any]:
    pod = s.one("Deployment", "clawbot").manifest["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "chat")


def pod_spec(s: Synthesis, name: str = "clawbot") -> dict[str, Any]:
    return s.one("Deployment", name).manifest["spec"]["template"]["spec"]
