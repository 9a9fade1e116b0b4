"""Synthesizes the dev and prod stacks once per session under Pulumi's mocks; tests read the objects and outputs."""
from __future__ import annotations

from typing import Any

import pytest

from infra.tools.synth import Synthesis, synthesize
from tests.infra.crd_validation import Report
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures: the dump job's database)

# What the CRD checks could and could not evaluate, summed over the session and printed at the end.
CRD_REPORT = Report()


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


@pytest.fixture(scope="session")
def crd_report() -> Report:
    return CRD_REPORT


def pytest_terminal_summary(terminalreporter: Any) -> None:
    r = CRD_REPORT
    if not (r.rules_run or r.update_only or r.skipped):
        return
    update_only = sorted({x.rule for x in r.update_only})
    skipped = sorted({(x.rule, x.reason) for x in r.skipped})
    terminalreporter.write_line(
        f"CRD CEL rules: {r.rules_run} evaluated; {len(update_only)} distinct update-only rules (oldSelf) not run on create; "
        f"{len(skipped)} distinct rules skipped for want of a CEL function"
    )
    for rule, reason in skipped:
        terminalreporter.write_line(f"  skipped: {rule}  ({reason})")
