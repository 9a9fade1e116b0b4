"""What a release leaves behind: the image history rollbacks read, the canary's stack output, its scrape labels.

The stack keeps its own history: each update exports `imageHistory` (the stable images it ran, newest first) and
the next update reads it back through a reference to this same stack, as the key rotation does.
"""
from __future__ import annotations

from typing import Any

import pulumi

from infra.contract import RELEASE_LABELS
from infra.images import image_history, parse_image
from infra.settings import StackSettings

SERVICE_MONITOR = "kubernetes:monitoring.coreos.com/v1:ServiceMonitor"


def history_output(previous: pulumi.Input[Any], settings: StackSettings) -> pulumi.Output[list[str]]:
    return pulumi.Output.from_input(previous).apply(lambda past: image_history(past, settings.image))


def canary_output(settings: StackSettings) -> dict[str, Any] | None:
    """The canary as operators and the deploy workflow read it; None when there is none."""
    c = settings.canary
    if c is None:
        return None
    return {
        "image": c.image,
        "version": parse_image(c.image).version_label,
        "weightPercent": c.weight_percent,
        "replicas": c.replicas,
        # The Service spreads requests over ready pods: the canary's real share moves with the stable count.
        "shareOfRequestsPercent": {
            "atMinReplicas": c.share_percent(settings.scaling.min_replicas),
            "atMaxReplicas": c.share_percent(settings.scaling.max_replicas),
        },
    }


def scrape_release_labels(args: pulumi.ResourceTransformationArgs) -> pulumi.ResourceTransformationResult | None:
    """Copy the pods' track and version labels onto every series the ServiceMonitor scrapes, so a query can put the
    canary's error rate and latency beside the stable set's (`track="canary"`, `app_kubernetes_io_version`)."""
    if args.type_ != SERVICE_MONITOR:
        return None
    spec = dict(args.props.get("spec") or {})
    spec["podTargetLabels"] = list(dict.fromkeys([*(spec.get("podTargetLabels") or []), *RELEASE_LABELS]))
    return pulumi.ResourceTransformationResult(props={**args.props, "spec": spec}, opts=args.opts)
