"""The real stacks under the pack: what `pulumi preview --policy-pack policy` would say about dev and prod."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from guardrails import POLICIES
from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

from infra.tools.synth import synthesize
from tests.infra.conftest import BEHIND_GATEWAY, NEXT_IMAGE

from .conftest import Violations, resource_args, stack_args, stack_resource

CONFIG_DIR = Path(__file__).resolve().parents[2] / "policy" / "config"


def enforcement_overrides(stack: str) -> dict[str, str]:
    """Policy name -> enforcement level from policy/config/<stack>.json, the file the PR workflow passes to preview."""
    raw = json.loads((CONFIG_DIR / f"{stack}.json").read_text())
    names = {p.name for p in POLICIES}
    out: dict[str, str] = {}
    for name, value in raw.items():
        assert name in names, f"policy/config/{stack}.json configures {name!r}, which is not a policy in the pack"
        level = value if isinstance(value, str) else value.get("enforcementLevel", "mandatory")
        assert level in ("advisory", "mandatory", "disabled"), f"{stack}.json: {name}: bad enforcement level {level!r}"
        out[name] = level
    return out


def test_prod_config_loosens_nothing() -> None:
    assert all(level == "mandatory" for level in enforcement_overrides("prod").values())


def test_dev_config_only_loosens_the_observability_stack_checks() -> None:
    loosened = {n for n, level in enforcement_overrides("dev").items() if level != "mandatory"}
    assert loosened <= {"stack-has-prometheus-rule", "stack-has-autoscaler"}


def type_token(api_version: str, kind: str) -> str:
    """The pulumi-kubernetes type of a manifest: apps/v1 Deployment -> kubernetes:apps/v1:Deployment."""
    group_version = api_version if "/" in api_version else f"core/{api_version}"
    return f"kubernetes:{group_version}:{kind}"


def test_type_token_matches_pulumi_kubernetes() -> None:
    assert type_token("v1", "Service") == "kubernetes:core/v1:Service"
    assert (
        type_token("monitoring.coreos.com/v1", "PrometheusRule") == "kubernetes:monitoring.coreos.com/v1:PrometheusRule"
    )


# prod behind a Gateway with a 10% canary (issue 21): the HTTPRoute carries the TLS listener and the canary's share.
VARIANTS = {"prod-gateway-canary": ("prod", {**BEHIND_GATEWAY, "canary": {"image": NEXT_IMAGE}})}


@pytest.fixture(scope="module", params=["dev", "prod", *VARIANTS])
def stack(request: pytest.FixtureRequest) -> tuple[str, list[tuple[str, str, dict[str, Any]]]]:
    stack_name, overrides = VARIANTS.get(request.param, (request.param, {}))
    result = synthesize(stack_name, overrides=overrides)  # in memory: Secret values are real here, not redacted
    return stack_name, [(type_token(o.api_version, o.kind), o.resource_name, o.manifest) for o in result.objects]


def test_the_stack_passes_every_guardrail(stack: tuple[str, list[tuple[str, str, dict[str, Any]]]]) -> None:
    name, objects = stack
    assert objects, f"stack {name} synthesized no Kubernetes objects"
    found: list[str] = []
    overrides = enforcement_overrides(name)
    for policy in POLICIES:
        if overrides.get(policy.name, "mandatory") != "mandatory":
            continue  # reported as advisory for this stack; it does not stop the preview
        v = Violations()
        if isinstance(policy, ResourceValidationPolicy):
            for token, resource_name, manifest in objects:
                policy.validate(resource_args(token, manifest, name=resource_name), v)
        elif isinstance(policy, StackValidationPolicy):
            policy.validate(stack_args(*(stack_resource(token, m, name=n) for token, n, m in objects)), v)
        found += [f"{policy.name}: {message}" for message in v.messages]
    assert found == [], f"stack {name} would be stopped by the policy pack:\n" + "\n".join(found)
