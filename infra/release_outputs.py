"""What a release leaves behind: the image history rollbacks read and the canary's stack output.

The stack keeps its own history: each update exports `imageHistory` (the stable images it ran, newest first) and
the next update reads it back through a reference to this same stack, as the key rotation does.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.images import image_history, parse_image
from infra.settings.stack import StackSettings


def history_output(previous: pulumi.Input[Any], settings: StackSettings) -> pulumi.Output[list[str]]:
    return pulumi.Output.from_input(previous).apply(lambda past: image_history(past, settings.release.image))


def canary_output(settings: StackSettings) -> dict[str, Any] | None:
    """The canary as operators and the deploy workflow read it; None when there is none."""
    c = settings.release.canary
    if c is None:
        return None
    return {
        "image": c.image,
        "version": parse_image(c.image).version_label,
        "weightPercent": c.weight_percent,
        "replicas": c.replicas,
        # Behind the stack's Gateway an HTTPRoute gives the weight at any count; behind the Service the share is a
        # count of ready pods (preview refuses a weight that count cannot give within 2 points).
        "splitBy": "HTTPRoute weight" if c.split_by_weight else "ready pods",
        "shareOfRequestsPercent": {
            "atMinReplicas": c.share_percent(settings.scaling.min_replicas),
            "atMaxReplicas": c.share_percent(settings.scaling.max_replicas),
        },
    }
