"""Holds every canary to the share it asked for and to the stack's ceiling, one pod or many.

A canary's share is what the traffic path serves it. Behind an HTTPRoute that forwards to it by weight (a Service
selecting the canary's pods among the rule's backendRefs), the share is its weight over the rule's total, at any
replica count. Otherwise the chat Service spreads requests over every ready chat pod, stable and canary alike, so the
share is the canary's pods over all pods, at each stable count from the floor (the HPA's minReplicas, or the replica
count) to the ceiling (its maxReplicas). That share must stay within 2 points of the weight the canary asked for, and
never exceed the stack's ceiling.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    PolicyConfigSchema,
    ReportViolation,
    Severity,
    StackValidationArgs,
    StackValidationPolicy,
)

from .kube import CHAT_APP_LABEL, display_name, kind_of, known, known_items, known_list

TRACK_LABEL = "track"
CANARY_WEIGHT_ANNOTATION = "clawbot.dev/canary-weight-percent"
MAX_WEIGHT = "maxWeightPercent"
DEFAULT_MAX_WEIGHT = 50
SHARE_TOLERANCE = 2.0  # points: infra/settings/checks.py CANARY_SHARE_TOLERANCE


def _pod_labels(props: Mapping[str, Any]) -> dict[str, Any]:
    return dict(known_items(known(known(known(known(props, "spec"), "template"), "metadata"), "labels")))


def _chat_track(props: Mapping[str, Any]) -> str | None:
    labels = _pod_labels(props)
    key, value = CHAT_APP_LABEL
    return labels.get(TRACK_LABEL) if labels.get(key) == value else None


def _int(value: Any) -> int | None:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return None


def _route_share(
    pod_labels: Mapping[str, Any], services: Mapping[str, Mapping[str, Any]], routes: list[Mapping[str, Any]]
) -> float | None:
    """The share an HTTPRoute rule gives the Services that select these pods; None when no route forwards to them."""
    for route in routes:
        for rule in known_list(known(known(route, "spec"), "rules")):
            refs = [
                (str(known(r, "name")), _int(known(r, "weight")) if known(r, "weight") is not None else 1)
                for r in known_list(known(rule, "backendRefs"))
                if known(r, "kind") in (None, "Service")
            ]
            total = sum(w or 0 for _, w in refs)
            selected = [
                w or 0 for name, w in refs if services.get(name) and services[name].items() <= pod_labels.items()
            ]
            if selected and total:
                return 100 * sum(selected) / total
    return None


def validate_canary_weight(args: StackValidationArgs, report_violation: ReportViolation) -> None:
    ceiling = int(args.get_config().get(MAX_WEIGHT, DEFAULT_MAX_WEIGHT))
    deployments: dict[str, tuple[str | None, Mapping[str, Any]]] = {}
    autoscaled: dict[str, tuple[int, int]] = {}
    services: dict[str, dict[str, Any]] = {}
    routes: list[Mapping[str, Any]] = []
    for r in args.resources:
        kind = kind_of(r.resource_type)
        name = known(known(r.props, "metadata"), "name")
        if kind == "Deployment" and name:
            deployments[str(name)] = (_chat_track(r.props), r.props)
        elif kind == "HorizontalPodAutoscaler":
            spec = known(r.props, "spec")
            target = known(spec, "scaleTargetRef")
            low, high = _int(known(spec, "minReplicas")) or 1, _int(known(spec, "maxReplicas"))
            if known(target, "kind") == "Deployment" and known(target, "name") and high is not None:
                autoscaled[str(known(target, "name"))] = (low, high)
        elif kind == "Service" and name:
            services[str(name)] = dict(known_items(known(known(r.props, "spec"), "selector")))
        elif kind == "HTTPRoute":
            routes.append(r.props)
    stable = [(name, props) for name, (track, props) in deployments.items() if track == "stable"]
    low = sum(autoscaled.get(n, (_int(known(known(p, "spec"), "replicas")) or 1,) * 2)[0] for n, p in stable)
    high = sum(autoscaled.get(n, (_int(known(known(p, "spec"), "replicas")) or 1,) * 2)[1] for n, p in stable)
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
        routed = _route_share(_pod_labels(props), services, routes)
        if routed is not None:
            shares, how = {0: routed}, f"the HTTPRoute gives it {routed:.0f}%"
        elif stable:
            pods = _int(known(known(props, "spec"), "replicas")) or 1
            shares = {n: 100 * pods / (pods + n) for n in range(low, high + 1)}
            how = (
                f"{pods} pod{'s' if pods > 1 else ''} beside {low}..{high} stable pods take {shares[low]:.0f}% to "
                f"{shares[high]:.0f}% of the requests"
                if low != high
                else f"{pods} pod{'s' if pods > 1 else ''} beside {low} stable pods take {shares[low]:.0f}% of the requests"
            )
        else:
            continue
        if max(shares.values()) > ceiling:
            report_violation(
                f"{where}: {how}, above this stack's ceiling of {ceiling}%; lower the canary's weight", None
            )
        if weight is not None and any(abs(s - weight) > SHARE_TOLERANCE for s in shares.values()):
            report_violation(
                f"{where} asks for {weight}% but {how}: more than {SHARE_TOLERANCE:g} points off. Route it through a "
                "Gateway (an HTTPRoute splits by weight at any replica count) or ask for a share the pods give",
                None,
            )


canary_weight = StackValidationPolicy(
    name="canary-weight-within-ceiling",
    description="Every canary is served the share it asked for (within 2 points) and no more than the stack's "
    "ceiling (maxWeightPercent).",
    validate=validate_canary_weight,
    enforcement_level=EnforcementLevel.MANDATORY,
    severity=Severity.HIGH,
    config_schema=PolicyConfigSchema(
        properties={
            MAX_WEIGHT: {
                "type": "integer",
                "minimum": 1,
                "maximum": 100,
                "default": DEFAULT_MAX_WEIGHT,
                "description": "The largest share of requests, in percent, a canary may take.",
            }
        }
    ),
)
