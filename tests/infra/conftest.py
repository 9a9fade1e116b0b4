"""Synthesizes the dev and prod stacks once per session under Pulumi's mocks; tests read the objects and outputs."""

from __future__ import annotations

from typing import Any

import pytest

from infra.tools.synth import Synthesis, synthesize
from tests.infra.crd_validation import Report
from tests.postgres_server import postgres_server, postgres_url  # noqa: F401  (fixtures: the dump job's database)

# prod behind a Gateway (issue 21 item 1): clients come through the Gateway's HTTPS listener, an HTTPRoute splits a
# canary's share by weight, and the chat Service is ClusterIP. The pods read clients from X-Forwarded-For sent by the
# Gateway's data plane (Envoy Gateway's proxies, in the VPC's pod subnets).
BEHIND_GATEWAY = {
    "gateway": "gateway-system/clawbot",
    "gatewayListener": "https",
    "gatewayProxyNamespace": "envoy-gateway-system",
    "serviceType": "ClusterIP",
    "tlsCertificateArn": "",
    "trustedProxies": ["10.0.0.0/16"],
}

# What the CRD checks could and could not evaluate, summed over the session and printed at the end.
CRD_REPORT = Report()


@pytest.fixture(scope="session")
def prod() -> Synthesis:
    return synthesize("prod")


@pytest.fixture(scope="session")
def dev() -> Synthesis:
    return synthesize("dev")


@pytest.fixture(scope="session")
def prod_gateway() -> Synthesis:
    """prod behind its Gateway, with a 10% canary."""
    return synthesize("prod", overrides={**BEHIND_GATEWAY, "canary": {"image": NEXT_IMAGE}})


NEXT_IMAGE = "ghcr.io/clawbot/clawbot:0.2.0@sha256:" + "b" * 64


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
