"""Refuses a canary that would take more of the requests than the stack's ceiling allows.

The chat Service spreads requests over every ready chat pod, stable and canary alike, so the canary's share is
its pods over all pods; with the stable set at its floor (its replica count, or its HPA's minReplicas) that share
is highest. The smallest canary is one pod, so a one-pod canary is only held to the weight it asked for; a larger
one is held to both.
"""
from __future__ import annotations

from typing import Any, Mapping

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .kube import CHAT_APP_LABEL, display_name, kind_of, known, known_items

TRACK_LABEL = "track"
CANARY_WEIGHT_ANNOTATION = "clawbot.dev/canary-weight-percent"
MAX_WEIGHT = "maxWeightPercent"
DEFAULT_MAX_WEIGHT = 50


def _chat_track(props: Mapping[str, Any]) -> str | None:
    template_labels = dict(known_items(known(known(known(known(props, "spec"), "template"), "metadata"), "labels")))
    key, value = CHAT_APP_LABEL
    return template_labels.get(TRACK_LABEL) if template_labels.get(key) == value else None


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def validate_canary_weight(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    ceiling = int(args.get_config().get(MAX_WEIGHT, DEFAULT_MAX_WEIGHT))
    deployments: dict[str, tuple[str | None, Mapping[str, Any]]] = {}
    hpa_floor: dict[str, int] = {}
    for r in args.resources:
        kind = kind_of(r.resource_type)
        name = known(known(r.props, "metadata"), "name")
        if kind == "Deployment" and name:
            deployments[str(name)] = (_chat_track(r.props), r.props)
        elif kind == "HorizontalPodAutoscaler":
            target = known(known(r.props, "spec"), "scaleTargetRef")
            floor = _int(known(known(r.props, "spec"), "minReplicas"))
            if known(target, "kind") == "Deployment" and known(target, "name") and floor is not None:
                hpa_floor[str(known(target, "name"))] = floor
    stable_floor = sum(
        hpa_floor.get(name, _int(known(known(props, "spec"), "replicas")) or 1)
        for name, (track, props) in deployments.items() if track == "stable"
    )
    for name, (track, props) in deployments.items():
        if track != "canary":
            continue
        where = f"canary Deployment {display_name(props, name)}"
        annotations = dict(known_items(known(known(props, "metadata"), "annotations")))
        weight = _int(annotations.get(CANARY_WEIGHT_ANNOTATION))
        if weight is not None and weight > ceiling:
            report_violation(
                f"{where} asks for {weight}% of the requests, above this stack's ceiling of {ceiling}%; lower the "
                f"stack's canary.weight (or raise {MAX_WEIGHT} in the policy config on purpose)",
                None,
            )
        replicas = _int(known(known(props, "spec"), "replicas")) or 1
        if replicas > 1 and stable_floor:
            share = 100 * replicas / (replicas + stable_floor)
            if share > ceiling:
                report_violation(
                    f"{where} runs {replicas} pods beside a floor of {stable_floor} stable pods, so it takes "
                    f"{share:.0f}% of the requests when load is lowest, above this stack's ceiling of {ceiling}%; "
                    "lower the canary's weight",
                    None,
                )


canary_weight = StackValidationPolicy(
    name="canary-weight-within-ceiling",
    description="A canary Deployment takes no more of the requests than the stack's ceiling (maxWeightPercent).",
    validate=validate_canary_weight,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={MAX_WEIGHT: {"type": "integer", "minimum": 1, "maximum": 100, "default": DEFAULT_MAX_WEIGHT,
                                 "description": "The largest share of requests, in percent, a canary may take."}}
    ),
)
