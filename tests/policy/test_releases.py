"""canary-weight-within-ceiling: a canary may take no more of the requests than the stack's ceiling (prod: 25%)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from guardrails.releases import CANARY_WEIGHT_ANNOTATION, TRACK_LABEL, canary_weight
from infra.contract import CANARY_WEIGHT_ANNOTATION as INFRA_WEIGHT_ANNOTATION
from infra.contract import TRACK_LABEL as INFRA_TRACK_LABEL
from infra.tools.synth import synthesize
from pulumi_policy import StackValidationArgs

from .conftest import Violations, stack_resource
from .objects import deployment
from .test_stacks import type_token

PROD_CONFIG = json.loads((Path(__file__).resolve().parents[2] / "policy" / "config" / "prod.json").read_text())
NEW = "ghcr.io/clawbot/clawbot:0.2.0@sha256:" + "b" * 64


def check(objects: list[tuple[str, dict[str, Any]]], config: dict[str, Any] | None = None) -> list[str]:
    args = StackValidationArgs([stack_resource(kind, props, name=f"r{i}") for i, (kind, props) in enumerate(objects)],
                               dict(config or {}))
    v = Violations()
    canary_weight.validate(args, v)
    return v.messages


def prod_canary(**canary: Any) -> list[str]:
    s = synthesize("prod", overrides={"canary": {"image": NEW, **canary}})
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
    assert prod_canary() == []  # 10% asked: one pod beside the two-pod floor, the smallest canary there is
    (message,) = prod_canary(weight=30)
    assert "asks for 30% of the requests, above this stack's ceiling of 25%" in message


def test_a_canary_of_several_pods_is_held_to_its_share_at_the_stable_floor() -> None:
    stable = track(deployment(), "clawbot", "stable", 4)
    hpa = {"metadata": {"name": "clawbot"}, "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "clawbot"},
                                                     "minReplicas": 4, "maxReplicas": 20}}
    canary = track(deployment(), "clawbot-canary", "canary", 3, weight=20)
    (message,) = check([("Deployment", stable), ("HorizontalPodAutoscaler", hpa), ("Deployment", canary)],
                       {"maxWeightPercent": 25})
    assert "runs 3 pods beside a floor of 4 stable pods, so it takes 43% of the requests" in message
    canary["spec"]["replicas"] = 1  # one pod is the least a canary can be: held to its asked-for weight only
    assert check([("Deployment", stable), ("HorizontalPodAutoscaler", hpa), ("Deployment", canary)],
                 {"maxWeightPercent": 25}) == []


def test_without_a_canary_or_a_ceiling_nothing_is_refused() -> None:
    stable = track(deployment(), "clawbot", "stable", 2)
    assert check([("Deployment", stable)]) == []
    canary = track(deployment(), "clawbot-canary", "canary", 1, weight=40)
    assert check([("Deployment", stable), ("Deployment", canary)]) == []  # the default ceiling is 50%
