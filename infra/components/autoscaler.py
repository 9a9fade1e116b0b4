"""Horizontal scaling of the chat Deployment: CPU utilization, optionally in-flight requests per pod."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.contract import CHAT_LABELS, COMMON_LABELS

INFLIGHT_METRIC = "clawbot_inflight_requests"


@dataclass
class AutoscalerArgs:
    namespace: pulumi.Input[str]
    deployment_name: pulumi.Input[str]
    min_replicas: int
    max_replicas: int
    cpu_percent: int = 70
    inflight_per_pod: int = 0  # 0: CPU only (the pods metric needs a custom-metrics adapter)
    scale_down_stabilization_seconds: int = 300
    name_prefix: str = "clawbot"


def hpa_metrics(args: AutoscalerArgs) -> list[dict[str, Any]]:
    metrics: list[dict[str, Any]] = [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": args.cpu_percent}},
        }
    ]
    if args.inflight_per_pod:
        metrics.append(
            {
                "type": "Pods",
                "pods": {
                    "metric": {"name": INFLIGHT_METRIC},
                    "target": {"type": "AverageValue", "averageValue": str(args.inflight_per_pod)},
                },
            }
        )
    return metrics


class Autoscaler(pulumi.ComponentResource):
    hpa_name: pulumi.Output[str]

    def __init__(self, name: str, args: AutoscalerArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("clawbot:infra:Autoscaler", name, None, opts)
        if not 1 <= args.min_replicas <= args.max_replicas:
            raise ValueError(
                f"Autoscaler min_replicas ({args.min_replicas}) must be between 1 and max_replicas ({args.max_replicas})"
            )
        self.hpa = k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata={
                "name": args.name_prefix,
                "namespace": args.namespace,
                "labels": {**CHAT_LABELS, **COMMON_LABELS},
            },
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": args.deployment_name},
                "minReplicas": args.min_replicas,
                "maxReplicas": args.max_replicas,
                "metrics": hpa_metrics(args),
                "behavior": {
                    # A new pod needs minutes to load the model: add capacity quickly, remove it reluctantly.
                    "scaleUp": {
                        "stabilizationWindowSeconds": 0,
                        "policies": [{"type": "Pods", "value": 2, "periodSeconds": 60}],
                    },
                    "scaleDown": {
                        "stabilizationWindowSeconds": args.scale_down_stabilization_seconds,
                        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 120}],
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.hpa_name = self.hpa.metadata["name"]
        self.register_outputs(
            {"hpa": self.hpa_name, "minReplicas": args.min_replicas, "maxReplicas": args.max_replicas}
        )
