"""canary-weight-within-ceiling: every canary, one pod or many, is served the share it asked for (within 2 points) and no
more of the requests than the stack's ceiling (prod: 25%)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from guardrails.releases import CANARY_WEIGHT_ANNOTATION, TRACK_LABEL, canary_weight
from pulumi_policy import StackValidationArgs

from infra.contract import CANARY_WEIGHT_ANNOTATION as INFRA_WEIGHT_ANNOTATION
from infra.contract import TRACK_LABEL as INFRA_TRACK_LABEL
from infra.tools.synth import synthesize
from tests.infra.conftest import BEHIND_GATEWAY

from .conftest import Violations, stack_resource
from .objects import deployment
from .test_stacks import type_token

PROD_CONFIG = json.loads((Path(__file__).resolve().parents[2] / "policy" / "config" / "prod.json").read_text())
NEW = "ghcr.io/clawbot/clawbot:0.2.0@sha256:" + "b" * 64


def check(objects: list[tuple[str, dict[str, Any]]], config: dict[str, Any] | None = None) -> list[str]:
    args = StackValidationArgs(
        [stack_resource(kind, props, name=f"r{i}") for i, (kind, props) in enumerate(objects)], dict(config or {})
    )
    v = Violations()
    canary_weight.validate(args, v)
    return v.messages


def prod_canary(**canary: Any) -> list[str]:
    """prod behind its Gateway, where a canary's share is the HTTPRoute's weight (room for its GPUs)."""
    s = synthesize("prod", overrides={**BEHIND_GATEWAY, "gpuLimit": 20, "canary": {"image": NEW, **canary}})
    objects = [(type_token(o.api_version, o.kind), o.manifest) for o in s.objects]
    return check(objects, PROD_CONFIG["canary-weight-within-ceiling"])


def track(props: dict[str, Any], name: str, value: str, replicas: int, weight: int | None = None) -> dict[str, Any]:
    props["metadata"]["name"] = name
    props["spec"]["replicas"] = replicas
    props["spec"]["template"]["metadata"]["labels"][TRACK_LABEL] = value
    if weight is not None:
        props["metadata"]["annotations"] = {CANARY_WEIGHT_ANNOTATION: str(weight)}
    return props


def test_the_pack_reads_the_label_and_annotation_the_program_writes() -> None:
    assert (TRACK_LABEL, CANARY_WEIGHT_ANNOTATION) == (INFRA_TRACK_LABEL, INFRA_WEIGHT_ANNOTATION)


def test_prod_takes_a_default_canary_and_refuses_one_above_its_ceiling() -> None:
    assert PROD_CONFIG["canary-weight-within-ceiling"]["maxWeightPercent"] == 25
    assert prod_canary() == []  # 10% asked, 10% routed
    asked, routed = prod_canary(weight=30)
    assert "asks for 30% of the requests, above this stack's ceiling of 25%" in asked
    assert "the HTTPRoute gives it 30%, above this stack's ceiling of 25%" in routed


def test_a_canary_is_held_to_the_share_its_pods_get_at_every_stable_count() -> None:
    stable = track(deployment(), "clawbot", "stable", 4)
    hpa = {
        "metadata": {"name": "clawbot"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "clawbot"}, "minReplicas": 4, "maxReplicas": 20},
    }
    canary = track(deployment(), "clawbot-canary", "canary", 3, weight=20)
    above, off = check(
        [("Deployment", stable), ("HorizontalPodAutoscaler", hpa), ("Deployment", canary)], {"maxWeightPercent": 25}
    )
    assert "3 pods beside 4..20 stable pods take 43% to 13% of the requests, above this stack's ceiling of 25%" in above
    assert "asks for 20% but 3 pods beside 4..20 stable pods take 43% to 13%" in off and "more than 2 points off" in off
    # One pod is held to the same rule: 20% at four stable pods, 5% at twenty.
    canary["spec"]["replicas"] = 1
    (off,) = check(
        [("Deployment", stable), ("HorizontalPodAutoscaler", hpa), ("Deployment", canary)], {"maxWeightPercent": 25}
    )
    assert "asks for 20% but 1 pod beside 4..20 stable pods take 20% to 5%" in off
    # Without the HPA the count is fixed: one pod beside four is the 20% asked.
    assert check([("Deployment", stable), ("Deployment", canary)], {"maxWeightPercent": 25}) == []


def test_a_canary_behind_an_http_route_is_held_to_the_routes_weights() -> None:
    stable = track(deployment(), "clawbot", "stable", 2)
    canary = track(deployment(), "clawbot-canary", "canary", 1, weight=10)
    services = [
        (
            "Service",
            {
                "metadata": {"name": f"clawbot-{t}"},
                "spec": {"selector": {"app.kubernetes.io/name": "clawbot", "track": t}},
            },
        )
        for t in ("stable", "canary")
    ]

    def route(canary_weight: int) -> tuple[str, dict[str, Any]]:
        refs = [
            {"name": "clawbot-stable", "port": 18789, "weight": 100 - canary_weight},
            {"name": "clawbot-canary", "port": 18789, "weight": canary_weight},
        ]
        return (
            "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
            {"metadata": {"name": "clawbot"}, "spec": {"rules": [{"backendRefs": refs}]}},
        )

    objects = [("Deployment", stable), ("Deployment", canary), *services]
    assert check([*objects, route(10)]) == []  # 10% routed, whatever the pod counts say (1 of 3 pods)
    (off,) = check([*objects, route(20)])
    assert "asks for 10% but the HTTPRoute gives it 20%" in off


def test_without_a_canary_nothing_is_refused_and_the_default_ceiling_is_half() -> None:
    stable = track(deployment(), "clawbot", "stable", 2)
    assert check([("Deployment", stable)]) == []
    canary = track(deployment(), "clawbot-canary", "canary", 1, weight=33)
    assert check([("Deployment", stable), ("Deployment", canary)]) == []  # one pod of three: 33%
    canary = track(deployment(), "clawbot-canary", "canary", 3, weight=50)
    above, off = check([("Deployment", stable), ("Deployment", canary)])
    assert "3 pods beside 2 stable pods take 60% of the requests, above this stack's ceiling of 50%" in above
    assert "asks for 50% but 3 pods beside 2 stable pods take 60%" in off
